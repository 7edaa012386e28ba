#include "common/utf8.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
enum { REPLACEMENT_LEN = 3 };

size_t utf8_char_len(const unsigned char *s, size_t len, size_t *skip)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte; the rest are 80..BF */
    if (c < 0x80) {
        *skip = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;       /* overlong below U+0800 */
        else if (c == 0xED) hi = 0x9F;  /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;       /* overlong below U+10000 */
        else if (c == 0xF4) hi = 0x8F;  /* above U+10FFFF */
    } else {
        *skip = 1; /* a continuation byte on its own, C0/C1, or F5..FF */
        return 0;
    }
    size_t i = 1;
    for (; i < need && i < len; i++) {
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
    }
    *skip = i;
    return i == need ? need : 0;
}

size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    size_t skip, n = len ? utf8_char_len(s, len, &skip) : 0;
    if (n == 0) return 0;
    static const unsigned char lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t v = s[0] & lead_mask[n];
    for (size_t i = 1; i < n; i++) v = (v << 6) | (s[i] & 0x3Fu);
    *cp = v;
    return n;
}

size_t utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool utf8_is_clean(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t skip;
        if (p[i] == 0 || utf8_char_len(p + i, len - i, &skip) == 0) return false;
        i += skip;
    }
    return true;
}

size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (max >= len) return len;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = max;
    while (i > 0 && max - i < 3 && (p[i - 1] & 0xC0) == 0x80) i--;
    if (i == 0) return max;
    unsigned char lead = p[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    /* Only a lead byte whose sequence runs past the cut makes a broken character. */
    if (need > 1 && max - (i - 1) < need) return i - 1;
    return max;
}

/* Writes clean text from src while it fits in limit bytes (dst NULL: only measures). Returns
 * the bytes written; *used gets the source bytes they came from. */
static size_t clean_write(char *dst, size_t limit, const char *src, size_t len, size_t *used)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t in = 0, out = 0;
    while (in < len) {
        size_t skip, n = p[in] ? utf8_char_len(p + in, len - in, &skip) : 0;
        if (!p[in]) skip = 1;
        const char *piece = n ? src + in : replacement;
        size_t plen = n ? n : REPLACEMENT_LEN;
        if (plen > limit - out) break;
        if (dst) memcpy(dst + out, piece, plen);
        out += plen;
        in += skip;
    }
    if (used) *used = in;
    return out;
}

char *utf8_clip(char *dst, size_t cap, const char *src, size_t len)
{
    if (cap == 0) return dst;
    if (!src) len = 0;
    size_t room = cap - 1;
    size_t used, n = clean_write(dst, room, src, len, &used);
    if (used < len && room >= 3) {
        /* It did not fit: cut earlier, to leave room for the mark. */
        n = clean_write(dst, room - 3, src, len, NULL);
        memcpy(dst + n, "...", 3);
        n += 3;
    }
    dst[n] = '\0';
    return dst;
}

char *utf8_clean_dup(const char *src, size_t len)
{
    if (!src) len = 0;
    size_t n = clean_write(NULL, SIZE_MAX, src, len, NULL);
    char *out = malloc(n + 1);
    if (!out) return NULL;
    clean_write(out, n, src, len, NULL);
    out[n] = '\0';
    return out;
}

int utf8_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
    int n = vsnprintf(buf, cap, fmt, ap);
    if (n >= 0 && cap > 0 && (size_t)n >= cap) {
        size_t keep = utf8_cut(buf, (size_t)n, cap - 1);
        buf[keep] = '\0';
    }
    return n;
}

int utf8_snprintf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = utf8_vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}
