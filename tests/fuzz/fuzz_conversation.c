/* Fuzzes the JSON conversation parser and the chat formatter behind it. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz.h"
#include "mixtral.h"

static mx_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        mx_error err;
        if (!tok) {
                const char *path = getenv("MX_FUZZ_TOKENIZER");
                if (mx_tokenizer_load(&tok, path ? path : MX_FUZZ_TOKENIZER, &err) < 0) {
                        fprintf(stderr, "%s\n", err.msg);
                        abort();
                }
        }
        mx_conversation conv = {0};
        mx_ids ids = {0};
        if (mx_conversation_from_json(&conv, (const char *)data, size, "fuzz.json", &err) == 0 &&
            mx_chat_encode(tok, size % 2 ? "system" : NULL, conv.msgs, conv.n, &ids, &err) == 0 &&
            (ids.n == 0 || ids.v[0] != mx_tokenizer_bos(tok)))
                abort();
        mx_ids_free(&ids);
        mx_conversation_free(&conv);
        return 0;
}
