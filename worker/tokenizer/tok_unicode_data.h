/* Generated Unicode tables (tok_unicode_data.c) used by tok_nfc.c. Sorted by first column. */
#ifndef SLUICE_WORKER_TOK_UNICODE_DATA_H
#define SLUICE_WORKER_TOK_UNICODE_DATA_H

#include <stdint.h>

extern const uint32_t tok_nfc_ccc[][3];    /* first, last, canonical combining class */
extern const unsigned tok_nfc_ccc_n;
extern const uint32_t tok_nfc_decomp[][3]; /* code point, first, second (0 for singletons) */
extern const unsigned tok_nfc_decomp_n;
extern const uint32_t tok_nfc_comp[][3];   /* first, second, composite; sorted by (first, second) */
extern const unsigned tok_nfc_comp_n;

/* tok_unicode_extra.c: full decompositions and lowercase mappings as (code point, offset,
 * length) into the flat arrays, sorted by code point; combining-mark (M) ranges sorted. */
extern const uint32_t tok_nfd_map[][3];
extern const unsigned tok_nfd_map_n;
extern const uint32_t tok_nfkd_map[][3];
extern const unsigned tok_nfkd_map_n;
extern const uint32_t tok_decomp_cps[];
extern const uint32_t tok_lower_map[][3];
extern const unsigned tok_lower_map_n;
extern const uint32_t tok_lower_cps[];
extern const uint32_t tok_mn_ranges[][2];
extern const unsigned tok_mn_ranges_n;

#endif
