/* tok_json_out.h - Jinja-compatible `tojson` output for the chat template renderer. */
#ifndef MX_TOK_JSON_OUT_H
#define MX_TOK_JSON_OUT_H

#include <jansson.h>

#include "core/tokenizer/tokenizer.h"

int tojson_string(mx_text *o, const char *s, size_t n, mx_error *err);
int tojson_value(mx_text *o, const json_t *v, mx_error *err);

#endif
