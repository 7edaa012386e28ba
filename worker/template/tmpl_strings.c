/* String operations with Python's meaning: case mapping, strip, split, title, find. Case
 * mapping covers ASCII, Latin-1, Greek and Cyrillic; other scripts pass through unchanged. */
#include "worker/template/tmpl_strings.h"

static uint32_t cp_upper(uint32_t c)
{
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c < 0x80) return c;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
    if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
    if (c >= 0x430 && c <= 0x44F) return c - 32;
    if (c >= 0x450 && c <= 0x45F) return c - 80;
    return c;
}

static uint32_t cp_lower(uint32_t c)
{
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0x80) return c;
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    return c;
}

/* Cased: has an upper or lower form (approximately Python's notion for the scripts above). */
static bool cp_cased(uint32_t c)
{
    return cp_upper(c) != c || cp_lower(c) != c;
}

static void put_cp(struct rctx *c, struct tbuf *b, uint32_t cp)
{
    char o[4];
    size_t k = 0;
    if (cp < 0x80) o[k++] = (char)cp;
    else if (cp < 0x800) {
        o[k++] = (char)(0xC0 | (cp >> 6));
        o[k++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        o[k++] = (char)(0xE0 | (cp >> 12));
        o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[k++] = (char)(0x80 | (cp & 0x3F));
    } else {
        o[k++] = (char)(0xF0 | (cp >> 18));
        o[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[k++] = (char)(0x80 | (cp & 0x3F));
    }
    tbuf_put(c, b, o, k);
}

struct tv ts_case(struct rctx *c, struct tv s, enum ts_case mode)
{
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    bool prev_cased = false, first = true;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = tu_decode(s.s, s.n, &i);
        uint32_t out = cp;
        switch (mode) {
        case TS_UPPER: out = cp_upper(cp); break;
        case TS_LOWER: out = cp_lower(cp); break;
        case TS_CAPITALIZE: out = first ? cp_upper(cp) : cp_lower(cp); break;
        case TS_TITLE:
            out = prev_cased ? cp_lower(cp) : cp_upper(cp);
            prev_cased = cp_cased(cp) || (cp >= 0x80 && !tu_isspace(cp));
            break;
        }
        first = false;
        put_cp(c, &b, out);
    }
    return tbuf_str(&b);
}

/* jinja2's title filter: capitalize each piece that follows spaces, '-', '(', '{', '[' or '<'. */
struct tv ts_jinja_title(struct rctx *c, struct tv s)
{
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    bool word_start = true;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp = tu_decode(s.s, s.n, &i);
        bool sep = tu_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        put_cp(c, &b, sep ? cp : word_start ? cp_upper(cp) : cp_lower(cp));
        word_start = sep;
    }
    return tbuf_str(&b);
}

static bool in_chars(uint32_t cp, const struct tv *chars)
{
    if (!chars) return tu_isspace(cp);
    for (size_t i = 0; i < chars->n;)
        if (tu_decode(chars->s, chars->n, &i) == cp) return true;
    return false;
}

struct tv ts_strip(struct tv s, const struct tv *chars, bool left, bool right)
{
    size_t a = 0, e = s.n;
    while (left && a < e) {
        size_t i = a;
        if (!in_chars(tu_decode(s.s, s.n, &i), chars)) break;
        a = i;
    }
    while (right && e > a) {
        size_t start = e - 1;
        while (start > a && ((unsigned char)s.s[start] & 0xC0) == 0x80) start--;
        size_t i = start;
        if (!in_chars(tu_decode(s.s, s.n, &i), chars)) break;
        e = start;
    }
    return tv_strref(s.s + a, e - a);
}

struct tv ts_split(struct rctx *c, struct tv s, const struct tv *sep, int64_t maxsplit, bool from_right)
{
    struct tv out = tv_list(c, 0);
    if (sep && sep->n == 0) tmpl_error(c, "split: empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        if (!sep) {
            for (;;) {
                while (i < s.n && tu_isspace((unsigned char)s.s[i])) i++;
                if (i >= s.n) break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    size_t e = s.n;
                    while (e > i && tu_isspace((unsigned char)s.s[e - 1])) e--;
                    tv_list_push(c, out.l, tv_strref(s.s + i, e - i));
                    break;
                }
                size_t j = i;
                while (j < s.n && !tu_isspace((unsigned char)s.s[j])) j++;
                tv_list_push(c, out.l, tv_strref(s.s + i, j - i));
                splits++;
                i = j;
            }
            return out;
        }
        for (;;) {
            const char *hit = (maxsplit < 0 || splits < maxsplit) ? memmem(s.s + i, s.n - i, sep->s, sep->n) : NULL;
            if (!hit) {
                tv_list_push(c, out.l, tv_strref(s.s + i, s.n - i));
                return out;
            }
            size_t k = (size_t)(hit - s.s);
            tv_list_push(c, out.l, tv_strref(s.s + i, k - i));
            i = k + sep->n;
            splits++;
        }
    }
    /* rsplit: collect from the right, then reverse. */
    struct tv rev = tv_list(c, 0);
    size_t e = s.n;
    int64_t splits = 0;
    if (!sep) {
        for (;;) {
            while (e > 0 && tu_isspace((unsigned char)s.s[e - 1])) e--;
            if (e == 0) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t a = 0;
                while (a < e && tu_isspace((unsigned char)s.s[a])) a++;
                tv_list_push(c, rev.l, tv_strref(s.s + a, e - a));
                break;
            }
            size_t j = e;
            while (j > 0 && !tu_isspace((unsigned char)s.s[j - 1])) j--;
            tv_list_push(c, rev.l, tv_strref(s.s + j, e - j));
            splits++;
            e = j;
        }
    } else {
        for (;;) {
            size_t found = SIZE_MAX;
            if ((maxsplit < 0 || splits < maxsplit) && e >= sep->n)
                for (size_t k = e - sep->n + 1; k-- > 0;)
                    if (memcmp(s.s + k, sep->s, sep->n) == 0) {
                        found = k;
                        break;
                    }
            if (found == SIZE_MAX) {
                tv_list_push(c, rev.l, tv_strref(s.s, e));
                break;
            }
            tv_list_push(c, rev.l, tv_strref(s.s + found + sep->n, e - found - sep->n));
            e = found;
            splits++;
        }
    }
    for (size_t k = rev.l->n; k-- > 0;) tv_list_push(c, out.l, rev.l->v[k]);
    return out;
}

struct tv ts_replace(struct rctx *c, struct tv s, struct tv old, struct tv new, int64_t count)
{
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    if (old.n == 0) {
        /* Python inserts new between every character and at both ends. */
        int64_t done = 0;
        size_t i = 0;
        for (;;) {
            if (count < 0 || done < count) {
                tbuf_put(c, &b, new.s, new.n);
                done++;
            }
            if (i >= s.n) break;
            size_t start = i;
            tu_decode(s.s, s.n, &i);
            tbuf_put(c, &b, s.s + start, i - start);
        }
        return tbuf_str(&b);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i <= s.n) {
        const char *hit = (count < 0 || done < count) ? memmem(s.s + i, s.n - i, old.s, old.n) : NULL;
        if (!hit) break;
        size_t k = (size_t)(hit - s.s);
        tbuf_put(c, &b, s.s + i, k - i);
        tbuf_put(c, &b, new.s, new.n);
        i = k + old.n;
        done++;
    }
    tbuf_put(c, &b, s.s + i, s.n - i);
    return tbuf_str(&b);
}

int64_t ts_find(struct tv s, struct tv sub, bool from_right)
{
    if (sub.n > s.n) return -1;
    size_t found = SIZE_MAX;
    if (!from_right) {
        const char *hit = sub.n ? memmem(s.s, s.n, sub.s, sub.n) : s.s;
        if (hit) found = (size_t)(hit - s.s);
    } else {
        for (size_t k = s.n - sub.n + 1; k-- > 0;)
            if (memcmp(s.s + k, sub.s, sub.n) == 0) {
                found = k;
                break;
            }
    }
    return found == SIZE_MAX ? -1 : (int64_t)tu_len(s.s, found);
}

int64_t ts_count(struct tv s, struct tv sub)
{
    if (sub.n == 0) return (int64_t)tu_len(s.s, s.n) + 1;
    int64_t n = 0;
    for (size_t i = 0; i + sub.n <= s.n;) {
        const char *hit = memmem(s.s + i, s.n - i, sub.s, sub.n);
        if (!hit) break;
        n++;
        i = (size_t)(hit - s.s) + sub.n;
    }
    return n;
}
