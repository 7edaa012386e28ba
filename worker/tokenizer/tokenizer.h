/* Tokenizer: text to token ids and back, loaded from a Hugging Face tokenizer.json (plus
 * tokenizer_config.json beside it) or from a GGUF file's embedded vocabulary.
 *
 * A loaded tokenizer is immutable and safe to use from several threads at once. */
#ifndef SLUICE_WORKER_TOKENIZER_H
#define SLUICE_WORKER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* path: a model directory (reads tokenizer.json and tokenizer_config.json), a tokenizer.json
 * file, or a .gguf file. On failure returns negative and writes into err a message naming
 * the file and the field. */
int tok_load(struct tokenizer **out, const char *path, char *err, size_t errlen);
void tok_free(struct tokenizer *tok);

/* Encodes UTF-8 text. add_special adds what the tokenizer's configuration says (BOS for
 * Llama 2 style models). Special/added tokens written in the text are recognized. The
 * returned array is malloc'd. Returns 0 or negative on allocation failure. */
int tok_encode(const struct tokenizer *tok, const char *text, size_t len, bool add_special,
               int32_t **ids, size_t *n_ids);
/* Decodes ids to a malloc'd NUL-terminated UTF-8 string. Bytes that do not form valid UTF-8
 * are replaced with U+FFFD, as Hugging Face does. */
int tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
               char **text, size_t *len);

int tok_vocab_size(const struct tokenizer *tok);
int tok_bos_id(const struct tokenizer *tok); /* -1 when none */
int tok_eos_id(const struct tokenizer *tok); /* -1 when none */
bool tok_is_special(const struct tokenizer *tok, int32_t id);
/* Text of one token as it reads in decoded output (may be a partial UTF-8 sequence), for
 * logprobs; writes at most cap bytes, returns the full length. */
size_t tok_token_piece(const struct tokenizer *tok, int32_t id, char *buf, size_t cap);
/* The same for id as the first token of a decoded sequence, where decoders differ (Metaspace
 * and Strip drop a leading space: Llama 2's "\u2581{" is "{" there, " {" later); raw bytes,
 * for constrained decoding (worker/grammar/). Returns the full length, 0 on failure. */
size_t tok_token_piece_first(const struct tokenizer *tok, int32_t id, char *buf, size_t cap);
/* The chat template (Jinja source) that came with the tokenizer, or NULL. */
const char *tok_chat_template(const struct tokenizer *tok);
const char *tok_bos_text(const struct tokenizer *tok); /* "<s>", or "" */
const char *tok_eos_text(const struct tokenizer *tok);

/* Incremental detokenization for streaming. Push ids one at a time; each push returns the
 * text that became final, which no later id can change (tok_stream.c says when that is):
 * always whole UTF-8, and the concatenation of all pieces and the flush is tok_decode of all
 * the ids, byte for byte. */
struct tok_stream;
struct tok_stream *tok_stream_new(const struct tokenizer *tok, bool skip_special);
/* Appends the new text to *out (malloc'd, NUL-terminated, may be empty) and its length. */
int tok_stream_push(struct tok_stream *s, int32_t id, char **out, size_t *len);
/* The end of the sequence: what was held back, as tok_decode ends it (an open run of byte
 * tokens decided, an incomplete character as U+FFFD). No push may follow. */
int tok_stream_flush(struct tok_stream *s, char **out, size_t *len);
void tok_stream_free(struct tok_stream *s);

#endif
