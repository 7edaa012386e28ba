/* User text inside messages: error bodies and logs quote model names, paths, field names and
 * parser context that a client sent, and a JSON encoder refuses a string that is not valid
 * UTF-8. These helpers make any bytes safe to quote: ill-formed sequences (and NUL, which
 * would end a C string early) become U+FFFD, and text that must be shortened is cut between
 * characters, never inside one.
 *
 * "Well-formed" is Unicode's definition (Table 3-7, the one jansson checks): no overlong
 * forms, no surrogates, nothing above U+10FFFF. Each maximal ill-formed subpart becomes one
 * U+FFFD, as Unicode recommends and as browsers and Python's 'replace' do. */
#ifndef SLUICE_COMMON_UTF8_H
#define SLUICE_COMMON_UTF8_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed sequence at s[0..len), or 0 when s starts an ill-formed one;
 * *skip gets how many bytes the ill-formed subpart spans (at least 1). */
size_t utf8_char_len(const unsigned char *s, size_t len, size_t *skip);

/* The code point of the well-formed sequence at s[0..len) into *cp: returns its length, or 0
 * (and *cp untouched) when s starts an ill-formed one. */
size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);

/* The UTF-8 bytes of code point cp (at most U+10FFFF) into out: returns how many (1 to 4). */
size_t utf8_encode(uint32_t cp, char out[4]);

/* True when s[0..len) is well-formed UTF-8 with no NUL. */
bool utf8_is_clean(const char *s, size_t len);

/* The largest n <= max such that s[0..n) does not end inside a character: a cut at n leaves
 * no broken sequence behind (whatever the text before it holds). */
size_t utf8_cut(const char *s, size_t len, size_t max);

/* Writes src[0..len) to dst as clean text (see above), NUL-terminated. When the clean text
 * needs more than cap - 1 bytes it is cut at a character boundary and "..." marks the cut.
 * cap must be at least 1. Returns dst, so a call can sit in a printf argument list. */
char *utf8_clip(char *dst, size_t cap, const char *src, size_t len);

/* The same with no limit on length: a malloc'd copy, NULL when out of memory. */
char *utf8_clean_dup(const char *src, size_t len);

/* vsnprintf and snprintf whose output, when it does not fit, ends at a character boundary. */
int utf8_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
int utf8_snprintf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
