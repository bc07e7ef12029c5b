/* tok_added.c - added tokens (<end_of_sentence>, <|im_start|> ...): the lookup table that finds
 * them in text before BPE runs, leftmost and longest first, as the reference tokenizers do. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

void added_set_free(tok_added_set *set)
{
    for (size_t i = 0; i < set->n; i++)
        free((char *)set->c[i].s);
    free(set->c);
    memset(set, 0, sizeof *set);
}

static int cand_cmp(const void *a, const void *b)
{
    const struct added_cand *x = a, *y = b;
    unsigned char fx = (unsigned char)x->s[0], fy = (unsigned char)y->s[0];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1; /* longest first */
    return x->id < y->id ? -1 : x->id > y->id;
}

/* normalized_stage = 0: tokens matched in the raw text (normalized=false, or no normalizer);
 * 1: tokens matched after normalization, by their normalized content. */
int added_set_build(tok_added_set *set, const tok_added *tokens, size_t n, int normalized_stage,
                    const tok_normalizer *norm, mx_error *err)
{
    memset(set, 0, sizeof *set);
    set->c = calloc(n ? n : 1, sizeof *set->c);
    if (!set->c)
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const tok_added *a = &tokens[i];
        int stage = a->normalized && norm != NULL;
        if (stage != normalized_stage || a->len == 0)
            continue;
        mx_text s = { 0 };
        int rc = stage ? normalizer_apply(norm, a->content, a->len, &s, err)
                       : mx_text_append(&s, a->content, a->len, err);
        if (rc < 0) {
            mx_text_free(&s);
            return mx_error_prefix(err, "added token '%s'", a->content);
        }
        if (s.len == 0) {
            mx_text_free(&s);
            continue;
        }
        set->c[set->n++] = (struct added_cand){ s.data, s.len, a->id, a->special, a->lstrip, a->rstrip };
    }
    qsort(set->c, set->n, sizeof *set->c, cand_cmp);
    size_t k = 0;
    for (unsigned b = 0; b <= 256; b++) {
        while (k < set->n && (unsigned char)set->c[k].s[0] < b)
            k++;
        set->first[b] = (uint32_t)k;
    }
    return 0;
}
