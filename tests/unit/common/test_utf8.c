/* Quoting a client's bytes in a message: cleaning to well-formed UTF-8 and cutting between
 * characters. jansson is the judge of "well-formed": what these helpers produce must be a
 * string it accepts. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

static bool jansson_accepts(const char *s)
{
    json_t *v = json_stringn(s, strlen(s));
    json_decref(v);
    return v != NULL;
}

Test(utf8, sequence_lengths_follow_unicode_table_3_7)
{
    static const struct {
        const char *bytes;
        size_t len, want, skip;
    } cases[] = {
        {"a", 1, 1, 1},
        {"\xC3\xA9", 2, 2, 2},             /* é */
        {"\xE4\xB8\xAD", 3, 3, 3},         /* 中 */
        {"\xF0\x9F\x98\x80", 4, 4, 4},     /* 😀 */
        {"\xC0\xAF", 2, 0, 1},             /* overlong '/' */
        {"\xC1\xBF", 2, 0, 1},
        {"\xE0\x80\xAF", 3, 0, 1},         /* overlong, 3 bytes */
        {"\xED\xA0\x80", 3, 0, 1},         /* a surrogate */
        {"\xF4\x90\x80\x80", 4, 0, 1},     /* above U+10FFFF */
        {"\xF5\x80\x80\x80", 4, 0, 1},
        {"\x80", 1, 0, 1},                 /* a lone continuation byte */
        {"\xE4\xB8", 2, 0, 2},             /* cut short: one maximal subpart */
        {"\xE4\xB8x", 3, 0, 2},
        {"\xF0\x9F\x98", 3, 0, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t skip = 0;
        size_t n = utf8_char_len((const unsigned char *)cases[i].bytes, cases[i].len, &skip);
        cr_assert_eq(n, cases[i].want, "case %zu: length %zu", i, n);
        cr_assert_eq(skip, cases[i].skip, "case %zu: skip %zu", i, skip);
    }
}

Test(utf8, decode_and_encode_agree_on_every_scalar_value)
{
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        char buf[4];
        size_t n = utf8_encode(cp, buf);
        cr_assert_eq(n, cp < 0x80 ? 1u : cp < 0x800 ? 2u : cp < 0x10000 ? 3u : 4u);
        uint32_t back = 0;
        cr_assert_eq(utf8_decode((const unsigned char *)buf, n, &back), n, "U+%04X", cp);
        cr_assert_eq(back, cp);
        /* One byte short is not a character. */
        if (n > 1) cr_assert_eq(utf8_decode((const unsigned char *)buf, n - 1, &back), 0u);
    }
    /* Ill-formed sequences decode to nothing, as utf8_char_len says. */
    static const char *const bad[] = {"\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t cp = 7;
        cr_assert_eq(utf8_decode((const unsigned char *)bad[i], strlen(bad[i]), &cp), 0u, "case %zu", i);
        cr_assert_eq(cp, 7u);
    }
}

Test(utf8, clean_replaces_ill_formed_bytes_and_nul)
{
    char out[64];
    cr_assert_str_eq(utf8_clip(out, sizeof out, "caf\xC3\xA9", 5), "caf\xC3\xA9");
    cr_assert_str_eq(utf8_clip(out, sizeof out, "a\x80" "b", 3), "a\xEF\xBF\xBD" "b");
    cr_assert_str_eq(utf8_clip(out, sizeof out, "a\0b", 3), "a\xEF\xBF\xBD" "b");
    /* A truncated sequence is one replacement, and the byte after it is kept. */
    cr_assert_str_eq(utf8_clip(out, sizeof out, "\xE4\xB8x", 3), "\xEF\xBF\xBDx");
    cr_assert_str_eq(utf8_clip(out, sizeof out, "\xFF\xFE", 2), "\xEF\xBF\xBD\xEF\xBF\xBD");
    cr_assert_str_eq(utf8_clip(out, sizeof out, NULL, 5), "");
    char *dup = utf8_clean_dup("\xC0\xAFx\xED\xA0\x80", 6);
    cr_assert_str_eq(dup, "\xEF\xBF\xBD\xEF\xBF\xBDx\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(dup);
    cr_assert(utf8_is_clean("caf\xC3\xA9", 5));
    cr_assert(!utf8_is_clean("a\0b", 3));
    cr_assert(!utf8_is_clean("\xE4\xB8", 2));
}

Test(utf8, clip_cuts_between_characters_and_marks_the_cut)
{
    /* 100 x "é" (2 bytes each): a 16-byte buffer holds 15 bytes, 12 of them text before "...". */
    char text[201];
    for (int i = 0; i < 100; i++) memcpy(text + 2 * i, "\xC3\xA9", 2);
    text[200] = '\0';
    char out[16];
    utf8_clip(out, sizeof out, text, 200);
    cr_assert_eq(strlen(out), 15);
    cr_assert(!memcmp(out + 12, "...", 3));
    cr_assert(utf8_is_clean(out, strlen(out)));
    /* Three-byte characters: 12 bytes of room before the mark hold four of them. */
    char cjk[3 * 50 + 1];
    for (int i = 0; i < 50; i++) memcpy(cjk + 3 * i, "\xE4\xB8\xAD", 3);
    cjk[150] = '\0';
    utf8_clip(out, sizeof out, cjk, 150);
    cr_assert_eq(strlen(out), 15);
    cr_assert(!memcmp(out, cjk, 12));
    /* Text that fits exactly is not marked. */
    utf8_clip(out, sizeof out, cjk, 15);
    cr_assert_str_eq(out, "\xE4\xB8\xAD\xE4\xB8\xAD\xE4\xB8\xAD\xE4\xB8\xAD\xE4\xB8\xAD");
    /* Tiny buffers still end in NUL and never in half a character. */
    char tiny[3];
    utf8_clip(tiny, sizeof tiny, cjk, 150);
    cr_assert_str_eq(tiny, "");
    char one[1];
    utf8_clip(one, sizeof one, "abc", 3);
    cr_assert_str_eq(one, "");
}

Test(utf8, cut_never_leaves_half_a_character)
{
    const char *s = "a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80z"; /* a é 中 😀 z: 1+2+3+4+1 bytes */
    size_t len = strlen(s);
    static const size_t want[] = {0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10, 11};
    for (size_t max = 0; max <= len; max++)
        cr_assert_eq(utf8_cut(s, len, max), want[max], "max %zu: %zu", max, utf8_cut(s, len, max));
    cr_assert_eq(utf8_cut(s, len, 100), len);
    /* Ill-formed bytes before the cut are left for the cleaner to replace. */
    cr_assert_eq(utf8_cut("ab\x80\x80", 4, 3), 3);
}

Test(utf8, snprintf_cut_short_ends_at_a_boundary)
{
    char buf[8];
    int n = utf8_snprintf(buf, sizeof buf, "x%s", "\xE4\xB8\xAD\xE4\xB8\xAD\xE4\xB8\xAD");
    cr_assert_eq(n, 10, "returns what vsnprintf would have written");
    cr_assert_str_eq(buf, "x\xE4\xB8\xAD\xE4\xB8\xAD"); /* 7 bytes: the third character would not fit */
    n = utf8_snprintf(buf, sizeof buf, "%s", "abc");
    cr_assert_eq(n, 3);
    cr_assert_str_eq(buf, "abc");
}

/* Whatever the bytes, the result is a string jansson accepts, no longer than asked. */
Test(utf8, random_bytes_always_come_out_clean)
{
    srand(7);
    unsigned char in[96];
    char out[40];
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(rand() % (int)sizeof in);
        bool clean = round % 2 == 0;
        if (clean) {
            /* Characters of every length, back to back. */
            static const char *const chars[] = {"a", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80"};
            size_t n = 0;
            for (;;) {
                const char *ch = chars[rand() % 4];
                if (n + strlen(ch) > len) break;
                memcpy(in + n, ch, strlen(ch));
                n += strlen(ch);
            }
            len = n;
        } else {
            for (size_t i = 0; i < len; i++) {
                /* Mostly bytes that start or continue sequences, where the mistakes would be. */
                int r = rand() % 4;
                in[i] = (unsigned char)(r == 0 ? rand() % 256 : r == 1 ? 0x80 + rand() % 64
                                      : r == 2 ? 0xC0 + rand() % 64 : 'a' + rand() % 26);
            }
        }
        size_t cap = 1 + (size_t)(rand() % (int)sizeof out);
        utf8_clip(out, cap, (const char *)in, len);
        cr_assert_lt(strlen(out), cap);
        cr_assert(jansson_accepts(out), "round %d: not valid UTF-8", round);
        char *dup = utf8_clean_dup((const char *)in, len);
        cr_assert(jansson_accepts(dup));
        cr_assert(utf8_is_clean(dup, strlen(dup)));
        free(dup);
        /* Clean text cut short stays clean: no character is cut in half. */
        if (clean) {
            char fmt[40];
            utf8_snprintf(fmt, cap, "%.*s", (int)len, (const char *)in);
            cr_assert(utf8_is_clean(fmt, strlen(fmt)), "round %d", round);
            cr_assert(!memcmp(fmt, in, strlen(fmt)));
        }
    }
}
