/* fuzz_config.c - libFuzzer target: arbitrary bytes as config.json. Parsing and validation
 * must end in success or an error naming the problem; a config that validates must give
 * sane derived numbers and serialise back to JSON that parses to the same config. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    mx_config cfg, again;
    mx_error err = {0};
    if (mx_config_parse(text, &cfg, &err) == 0 && mx_config_validate(&cfg, &err) == 0) {
        if (mx_config_attn_width(&cfg) <= 0 || mx_config_kv_width(&cfg) <= 0 || mx_config_param_count(&cfg) <= 0)
            abort();
        char *json = mx_config_to_json(&cfg);
        if (json) {
            if (mx_config_parse(json, &again, &err) != 0 || again.hidden_size != cfg.hidden_size ||
                again.num_hidden_layers != cfg.num_hidden_layers ||
                memcmp(again.attn_type, cfg.attn_type, (size_t)cfg.num_hidden_layers) != 0)
                abort();
            free(json);
        }
    }
    free(text);
    return 0;
}
