/* What the tokenizer class named in tokenizer_config.json changes, as transformers 5's
 * AutoTokenizer.from_pretrained(dir) has it: the ids every Hugging Face user (and vLLM) gets.
 *
 * A "LlamaTokenizer" (or "LlamaTokenizerFast") takes only the vocabulary, merges, added
 * tokens and post-processor from tokenizer.json and builds the rest itself
 * (transformers/models/llama/tokenization_llama.py): no normalizer; a Metaspace
 * pre-tokenizer ("▁" for spaces, not split) that puts one "▁" before each stretch of text
 * between added tokens unless it already starts with a space ("always"), or only before the
 * one at the very start ("first"), or never; the decoder Replace("▁", " "), ByteFallback,
 * Fuse, then Strip(" ", 1, 0) when a prefix space is added; and a BPE model with byte
 * fallback, fused unknowns and no unknown token. So "   " is "▁▁▁" (one token), not the
 * "▁▁▁▁" that tokenizer.json's Prepend normalizer makes, and " a" after "<s>" is "▁a".
 * add_bos_token and add_eos_token are not read when tokenizer.json exists.
 *
 * AutoTokenizer does not build that class where tokenizer.json is byte-level, nor where
 * config.json's model_type has a tokenizer of its own that is the generic backend (the
 * Mistral family, among others): then tokenizer.json is used as it is. */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

static const char SPACE_MARK[] = "\xE2\x96\x81"; /* U+2581 */

/* The model types whose AutoTokenizer class is the generic backend, so a hub class of
 * LlamaTokenizer does not count (TOKENIZER_MAPPING_NAMES and
 * MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS of transformers 5.25.0, without mistral_common:
 * with it the Mistral family's own tokenizer runs, which is not Llama's either). */
static const char *const keeps_json[] = {
    "EvollaModel", "arctic", "aria", "beam", "bigbird_pegasus", "canary", "chatlm", "cohere_asr", "ernie4_5",
    "ernie4_5_moe", "flex_olmo", "fuyu", "glm", "glm4", "glm4_moe", "glm4_moe_lite", "glm4v", "glm4v_moe",
    "glm_image", "glmasr", "got_ocr2", "gpt_bigcode", "gradium_phonon_tts", "granite", "granitemoe",
    "granitemoehybrid", "granitemoeshared", "h2ovl_chat", "hyperclovax", "hyperclovax_vision_v2",
    "hyperclovax_vlm", "internlm2", "internlm3", "iquestcoder", "jamba", "kimi_k25", "kimi_linear",
    "kosmos-2", "llava", "llava_next", "mimo_v2_flash", "minicpm3", "minicpm_ocr", "minicpmv", "minicpmv4_6",
    "minicpmv4_7", "minimax_m2", "ministral", "ministral3", "mistral", "mistral3", "mistral_large4",
    "mixtral", "modernbert", "modernbert-decoder", "molmo", "molmo2", "nemo_speechlm", "nemotron", "nvfp4",
    "nystromformer", "olmo2", "olmo3", "olmo_hybrid", "omniasr", "opencua", "openvla", "paddleocr_vl",
    "pegasus_x", "persimmon", "phi3", "phi3_v", "phimoe", "pix2struct", "pixtral", "pocket_tts", "qwen2",
    "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "siglip2", "smolvlm", "stablelm", "step3_vl",
    "umt5", "vipllava", "voxtral", "voxtral_realtime", "xlm-roberta-xl",
};

bool tok_class_is_llama(const char *cls, const char *model_type)
{
    if (!cls || !(strcmp(cls, "LlamaTokenizer") == 0 || strcmp(cls, "LlamaTokenizerFast") == 0)) return false;
    for (size_t i = 0; model_type && i < sizeof(keeps_json) / sizeof(keeps_json[0]); i++)
        if (strcmp(model_type, keeps_json[i]) == 0) return false;
    return true;
}

int tok_llama_pipeline(struct tokenizer *t, bool add_prefix_space, bool legacy)
{
    tok_pipeline_clear(t);
    t->pre = calloc(1, sizeof(*t->pre));
    t->dec = calloc(4, sizeof(*t->dec));
    if (!t->pre || !t->dec) return -1;

    struct tok_pre *pre = &t->pre[t->n_pre++];
    pre->kind = TOK_PRE_METASPACE;
    memcpy(pre->replacement, SPACE_MARK, sizeof(SPACE_MARK));
    pre->replacement_len = 3;
    pre->prepend_scheme = !add_prefix_space ? TOK_PREPEND_NEVER : legacy ? TOK_PREPEND_ALWAYS : TOK_PREPEND_FIRST;
    pre->split = false;

    t->has_decoder = true;
    t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_REPLACE, .a = tok_strndup(SPACE_MARK, 3), .a_len = 3,
                                          .b = tok_strndup(" ", 1), .b_len = 1};
    t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_BYTEFALLBACK};
    t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_FUSE};
    if (add_prefix_space)
        t->dec[t->n_dec++] = (struct tok_dec){.kind = TOK_DEC_STRIP, .a = tok_strndup(" ", 1), .a_len = 1, .start = 1};
    if (!t->dec[0].a || !t->dec[0].b || (add_prefix_space && !t->dec[3].a)) return -1;

    t->byte_fallback = true;
    t->fuse_unk = true;
    t->ignore_merges = false;
    t->unk_id = -1;
    return 0;
}
