/* A growable byte string, always NUL-terminated once anything was appended: the text a stream
 * accumulates (cumulative FastChat text, a non-streamed answer, one engine step's output). */
#ifndef SLUICE_COMMON_STRBUF_H
#define SLUICE_COMMON_STRBUF_H

#include <stddef.h>

struct strbuf {
    char *p;    /* NULL until the first append */
    size_t len;
    size_t cap;
};

/* Makes room for extra more bytes (and the NUL); returns 0 or -1 when out of memory. */
int strbuf_reserve(struct strbuf *b, size_t extra);
/* Appends n bytes; returns 0, or -1 when out of memory (the buffer is then unchanged). */
int strbuf_append(struct strbuf *b, const void *data, size_t n);
static inline int strbuf_putc(struct strbuf *b, char c)
{
    return strbuf_append(b, &c, 1);
}
/* The text, "" while empty. */
static inline const char *strbuf_str(const struct strbuf *b)
{
    return b->p ? b->p : "";
}
/* Empties the buffer but keeps its memory. */
static inline void strbuf_clear(struct strbuf *b)
{
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}
void strbuf_free(struct strbuf *b);

#endif
