/* Code point ranges to sequences of byte ranges that match exactly their UTF-8 encodings, as
 * Rust's regex-syntax does (Utf8Sequences): split a range where the encoded length changes,
 * then where a continuation byte's range would not cover 0x80..0xBF fully, until each piece's
 * bytes vary independently. */
#include <stdlib.h>

#include "common/utf8.h"
#include "worker/grammar/grammar_internal.h"

int gram_utf8_sequences(const uint32_t *ranges, size_t n_ranges, uint8_t (*seqs)[8], int *lens, int cap)
{
    /* A piece splits into at most a handful per level; 32 pending pieces per input range
     * is far more than the splitting can leave. */
    size_t stack_cap = 64, sp = 0;
    uint32_t(*stack)[2] = malloc(stack_cap * sizeof *stack);
    if (!stack) return -1;
    int n_out = 0;
    for (size_t k = n_ranges; k-- > 0;) {
        stack[sp][0] = ranges[2 * k];
        stack[sp][1] = ranges[2 * k + 1];
        sp++;
        while (sp > 0) {
            uint32_t lo = stack[sp - 1][0], hi = stack[sp - 1][1];
            sp--;
            for (;;) {
                if (sp + 2 > stack_cap) {
                    stack_cap *= 2;
                    void *q = realloc(stack, stack_cap * sizeof *stack);
                    if (!q) {
                        free(stack);
                        return -1;
                    }
                    stack = q;
                }
                bool split = false;
                static const uint32_t maxes[3] = {0x7F, 0x7FF, 0xFFFF};
                for (int i = 0; i < 3 && !split; i++) {
                    if (lo <= maxes[i] && maxes[i] < hi) {
                        stack[sp][0] = maxes[i] + 1;
                        stack[sp][1] = hi;
                        sp++;
                        hi = maxes[i];
                        split = true;
                    }
                }
                if (split) continue;
                if (hi >= 0x80) {
                    for (int i = 1; i < 4 && !split; i++) {
                        uint32_t m = (1u << (6 * i)) - 1;
                        if ((lo & ~m) != (hi & ~m)) {
                            if ((lo & m) != 0) {
                                stack[sp][0] = (lo | m) + 1;
                                stack[sp][1] = hi;
                                sp++;
                                hi = lo | m;
                                split = true;
                            } else if ((hi & m) != m) {
                                stack[sp][0] = hi & ~m;
                                stack[sp][1] = hi;
                                sp++;
                                hi = (hi & ~m) - 1;
                                split = true;
                            }
                        }
                    }
                    if (split) continue;
                }
                if (n_out >= cap) {
                    free(stack);
                    return -1;
                }
                char a[4], b[4];
                int len = (int)utf8_encode(lo, a);
                utf8_encode(hi, b);
                for (int i = 0; i < len; i++) {
                    seqs[n_out][2 * i] = (uint8_t)a[i];
                    seqs[n_out][2 * i + 1] = (uint8_t)b[i];
                }
                lens[n_out++] = len;
                break;
            }
        }
    }
    free(stack);
    return n_out;
}
