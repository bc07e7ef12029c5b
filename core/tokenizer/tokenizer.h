/* tokenizer.h - public API of the byte-level BPE tokenizer: load a Hugging Face tokenizer.json,
 * encode text to ids, decode ids to text (whole or streamed), match stop strings, render the
 * MiniMax chat templates. Nothing here prints, exits or keeps global state; a loaded
 * mx_tokenizer is read-only after load (its merge cache is locked) and may be shared by threads. */
#ifndef MX_TOKENIZER_H
#define MX_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct mx_tokenizer mx_tokenizer;

/* A growable list of token ids; zero-initialise, append with the encode functions, free with
 * mx_tok_ids_free. */
typedef struct {
    int32_t *ids;
    size_t len, cap;
} mx_tok_ids;

/* A growable byte string, always NUL-terminated after len (data may be NULL while len == 0). */
typedef struct {
    char *data;
    size_t len, cap;
} mx_text;

void mx_tok_ids_free(mx_tok_ids *ids);
int mx_tok_ids_push(mx_tok_ids *ids, int32_t id, mx_error *err);
void mx_text_free(mx_text *t);
int mx_text_append(mx_text *t, const void *bytes, size_t n, mx_error *err);

/* Loads tokenizer.json from a file or from memory. Any component this implementation does not
 * support (a WordPiece model, a Metaspace pre-tokenizer, a BPE dropout ...) is an
 * MX_EUNSUPPORTED error naming it, never a silently different tokenization. */
int mx_tokenizer_load(const char *path, mx_tokenizer **out, mx_error *err);
int mx_tokenizer_load_json(const char *json, size_t len, mx_tokenizer **out, mx_error *err);
void mx_tokenizer_free(mx_tokenizer *t);

/* One past the largest id the file defines (vocab and added tokens). */
int32_t mx_tokenizer_n_ids(const mx_tokenizer *t);
/* The id of a token written as in tokenizer.json (an added token's content such as
 * "<end_of_sentence>", or a vocab key), or -1 if there is none. */
int32_t mx_tokenizer_token_id(const mx_tokenizer *t, const char *token);
/* 1 if id is an added token marked special (control markers decode_skip_special drops). */
int mx_tokenizer_is_special(const mx_tokenizer *t, int32_t id);

/* Encodes UTF-8 text (len bytes, need not be NUL-terminated) and appends the ids to out.
 * allow_special: 1 = added tokens marked special in the text become their ids (the chat
 * template path); 0 = special-token text is tokenized as ordinary text (user content).
 * No BOS/EOS is added. Invalid UTF-8 is an MX_EINVAL error giving the byte offset. */
int mx_tokenizer_encode(const mx_tokenizer *t, const char *text, size_t len, int allow_special,
                        mx_tok_ids *out, mx_error *err);

/* Decodes ids to UTF-8 text appended to out. Byte sequences that do not form valid UTF-8
 * become U+FFFD. skip_special drops special added tokens. An id the tokenizer does not
 * define is an MX_ERANGE error naming it. */
int mx_tokenizer_decode(const mx_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        mx_text *out, mx_error *err);

/* Streaming decoder: push ids one at a time; only whole UTF-8 characters are appended to
 * out, bytes of an unfinished character are held until the ids that complete it arrive.
 * A sequence that can no longer become valid is emitted as U+FFFD. */
typedef struct {
    const mx_tokenizer *tok;
    int skip_special;
    unsigned char held[4];
    size_t n_held;
} mx_detok_stream;

void mx_detok_stream_init(mx_detok_stream *s, const mx_tokenizer *t, int skip_special);
int mx_detok_stream_push(mx_detok_stream *s, int32_t id, mx_text *out, mx_error *err);
/* End of stream: held bytes of an unfinished character become U+FFFD. */
int mx_detok_stream_finish(mx_detok_stream *s, mx_text *out, mx_error *err);

/* Stop strings over a stream of text chunks (as the streaming decoder produces them): text
 * that might be the start of a stop string is held back; when a stop string completes,
 * exactly the text before it has been emitted and push returns 1. */
typedef struct mx_stop_matcher mx_stop_matcher;
int mx_stop_matcher_new(const char *const *stops, size_t n_stops, mx_stop_matcher **out,
                        mx_error *err);
void mx_stop_matcher_free(mx_stop_matcher *m);
/* Appends the text that is certainly not part of a stop string to out. Returns 1 when a stop
 * string matched (its index in *which if which is not NULL), 0 when not yet, < 0 on error.
 * After a match the matcher stays stopped and ignores further input. */
int mx_stop_matcher_push(mx_stop_matcher *m, const char *text, size_t len, mx_text *out,
                         size_t *which, mx_error *err);
/* End of stream without a stop: flushes the held-back text to out. */
int mx_stop_matcher_finish(mx_stop_matcher *m, mx_text *out, mx_error *err);

/* Chat templates rendered natively (no Jinja engine). */
typedef enum {
    MX_CHAT_MINIMAX_TEXT01 = 0, /* MiniMax-Text-01 tokenizer_config.json (function calling rev.) */
    MX_CHAT_MINIMAX_M1 = 1      /* MiniMax-M1 tokenizer_config.json */
} mx_chat_format;

/* "minimax-text-01" or "minimax-m1". */
int mx_chat_format_from_name(const char *name, mx_chat_format *out, mx_error *err);
/* messages_json: a JSON array of {"role", "content", ["name"]}; content is a string or a list
 * of {"type":"text","text":...} parts. tools_json: a JSON array or NULL. Appends the prompt
 * text to out. Unknown roles, missing fields and bad JSON are MX_EINVAL errors. */
int mx_chat_render_json(mx_chat_format fmt, const char *messages_json, const char *tools_json,
                        int add_generation_prompt, mx_text *out, mx_error *err);

/* Writes tokenizer.json and tokenizer_config.json (with the MiniMax-Text-01 chat template) of
 * a small byte-level BPE tokenizer for random-weight test models into dir: 256 byte tokens,
 * merges learned from a fixed built-in text, and <beginning_of_sentence>,
 * <end_of_sentence>, <end_of_document> at ids vocab_size-3 .. vocab_size-1. */
int mx_tokenizer_write_small(const char *dir, int vocab_size, mx_error *err);

#endif
