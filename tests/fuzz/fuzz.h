/* The libFuzzer entry point every target defines, and what the targets
 * that build tokenizers do with them. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "mixtral.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Encodes text and decodes the ids back: a tokenizer a loader accepted
 * must do both without faults. */
static inline void fuzz_round_trip(const mx_tokenizer *tok, const char *text, size_t len) {
        mx_ids ids = {0};
        mx_buf out = {0};
        if (mx_tokenize(tok, text, len, &ids) == 0)
                mx_detokenize(tok, ids.v, ids.n, &out);
        mx_ids_free(&ids);
        mx_buf_free(&out);
}
