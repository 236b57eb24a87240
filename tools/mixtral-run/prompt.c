/* Turning --prompt, --prompt-file, --messages, --chat and --system into the
 * ids the model sees. */
#include <string.h>

#include "mx_common.h"
#include "run.h"

/* Bound for prompt files and stdin: far above any context length. */
#define MAX_PROMPT_BYTES (256u << 20)

bool run_has_prompt(const run_opts *o) {
        return o->prompt || o->prompt_file || o->messages || o->chat;
}

static int read_stdin(char **data, size_t *len, mx_error *err) {
        mx_buf b = {0};
        char chunk[65536];
        size_t k;
        int r = mx_buf_append(&b, "", 0);
        while (r == 0 && (k = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
                r = b.n + k > MAX_PROMPT_BYTES ? -EFBIG : mx_buf_append(&b, chunk, k);
        if (r == 0 && ferror(stdin))
                r = -EIO;
        if (r < 0) {
                mx_buf_free(&b);
                return mx_error_set(err, r, "stdin: %s", strerror(-r));
        }
        *data = b.p;
        *len = b.n;
        return 0;
}

/* "-" is stdin; anything else must be a regular file. */
static int read_input(const char *path, char **data, size_t *len, mx_error *err) {
        if (strcmp(path, "-") == 0)
                return read_stdin(data, len, err);
        return mx_read_file(path, MAX_PROMPT_BYTES, data, len, err);
}

static int conversation_ids(const run_opts *o, const mx_tokenizer *tok, mx_ids *ids,
                            mx_error *err) {
        _cleanup_(mx_conversation_free) mx_conversation conv = {0};
        if (o->messages) {
                _cleanup_free_ char *data = NULL;
                size_t len;
                int r = read_input(o->messages, &data, &len, err);
                if (r == 0)
                        r = mx_conversation_from_json(&conv, data, len,
                                                      strcmp(o->messages, "-") ? o->messages : "stdin",
                                                      err);
                if (r < 0)
                        return r;
        }
        if (o->chat && mx_conversation_add(&conv, MX_ROLE_USER, o->chat, strlen(o->chat)) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        return mx_chat_encode(tok, o->system, conv.msgs, conv.n, ids, err);
}

int run_prompt_ids(const run_opts *o, const mx_tokenizer *tok, mx_ids *ids, mx_error *err) {
        if (o->messages || o->chat)
                return conversation_ids(o, tok, ids, err);

        _cleanup_free_ char *data = NULL;
        size_t len = o->prompt ? strlen(o->prompt) : 0;
        if (o->prompt_file) {
                int r = read_input(o->prompt_file, &data, &len, err);
                if (r < 0)
                        return r;
        }
        int32_t bos = mx_tokenizer_bos(tok);
        if (bos >= 0 && mx_ids_push(ids, bos) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = mx_tokenize(tok, data ? data : o->prompt, len, ids);
        return r < 0 ? mx_error_set(err, r, "cannot tokenize the prompt: %s", strerror(-r)) : 0;
}
