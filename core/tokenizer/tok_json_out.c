/* tok_json_out.c - Jinja's `tojson` as chat templates use it (Hugging Face's override:
 * separators ", " and ": ", keys in their given order, non-ASCII left as is, strings escaped
 * like JSON.stringify / json.dumps). Used only by the chat template renderer. */
#include "core/tokenizer/tok_internal.h"
#include "core/tokenizer/tok_json_out.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int put(mx_text *o, const char *s, mx_error *err)
{
    return mx_text_append(o, s, strlen(s), err);
}

int tojson_string(mx_text *o, const char *s, size_t n, mx_error *err)
{
    if (put(o, "\"", err) < 0)
        return err->code;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char buf[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(buf, sizeof buf, "\\u%04x", c);
                esc = buf;
            }
        }
        if (!esc)
            continue;
        if (mx_text_append(o, s + run, i - run, err) < 0 || put(o, esc, err) < 0)
            return err->code;
        run = i + 1;
    }
    if (mx_text_append(o, s + run, n - run, err) < 0)
        return err->code;
    return put(o, "\"", err);
}

/* The shortest %g form that reads back as the same double, as JavaScript prints numbers. */
static int put_real(mx_text *o, double v, mx_error *err)
{
    char buf[40];
    if (!isfinite(v))
        return put(o, "null", err);
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return put(o, buf, err);
}

int tojson_value(mx_text *o, const json_t *v, mx_error *err)
{
    char buf[32];
    switch (json_typeof(v)) {
    case JSON_NULL: return put(o, "null", err);
    case JSON_TRUE: return put(o, "true", err);
    case JSON_FALSE: return put(o, "false", err);
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return put(o, buf, err);
    case JSON_REAL: return put_real(o, json_real_value(v), err);
    case JSON_STRING: return tojson_string(o, json_string_value(v), json_string_length(v), err);
    case JSON_ARRAY: {
        if (put(o, "[", err) < 0)
            return err->code;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i && put(o, ", ", err) < 0) || tojson_value(o, json_array_get(v, i), err) < 0)
                return err->code;
        return put(o, "]", err);
    }
    case JSON_OBJECT: {
        if (put(o, "{", err) < 0)
            return err->code;
        const char *key;
        json_t *val;
        int first = 1;
        json_object_foreach((json_t *)v, key, val) {
            if ((!first && put(o, ", ", err) < 0) || tojson_string(o, key, strlen(key), err) < 0 ||
                put(o, ": ", err) < 0 || tojson_value(o, val, err) < 0)
                return err->code;
            first = 0;
        }
        return put(o, "}", err);
    }
    }
    return mx_fail(err, MX_EINTERNAL, "tojson: unknown JSON type");
}
