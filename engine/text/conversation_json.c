/* Conversations given as a JSON array of {"role", "content"} objects, the
 * shape OpenAI-style clients use. Other keys in a message are ignored. */
#include <jansson.h>
#include <string.h>

#include "mx_common.h"

#include "mixtral.h"

/* All strings live in json values held by one array, so messages can
 * point into them without copies. */
static json_t *owner(mx_conversation *conv) {
        if (!conv->owner)
                conv->owner = json_array();
        return conv->owner;
}

static int push(mx_conversation *conv, mx_role role, const char *s, size_t len) {
        int r = mx_grow((void **)&conv->msgs, &conv->cap, conv->n + 1, sizeof(mx_message));
        if (r < 0)
                return r;
        conv->msgs[conv->n++] = (mx_message){role, s, len};
        return 0;
}

int mx_conversation_add(mx_conversation *conv, mx_role role, const char *content, size_t len) {
        json_t *arr = owner(conv), *s = json_stringn_nocheck(content, len);
        if (!arr || !s || json_array_append_new(arr, s) < 0)
                return -ENOMEM;
        return push(conv, role, json_string_value(s), len);
}

static int parse_message(mx_conversation *conv, json_t *m, size_t i, const char *label,
                         mx_error *err) {
        if (!json_is_object(m))
                return mx_error_set(err, -EINVAL, "%s: message %zu is not an object", label, i + 1);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        mx_role r;
        if (!json_is_string(role))
                return mx_error_set(err, -EINVAL, "%s: message %zu has no \"role\" string", label, i + 1);
        if (mx_role_from_string(json_string_value(role), &r) < 0)
                return mx_error_set(err, -EINVAL,
                                    "%s: message %zu has role \"%s\" (expected system, user or assistant)",
                                    label, i + 1, json_string_value(role));
        if (!json_is_string(content))
                return mx_error_set(err, -EINVAL, "%s: message %zu has no \"content\" string", label,
                                    i + 1);
        if (push(conv, r, json_string_value(content), json_string_length(content)) < 0)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", label);
        return 0;
}

int mx_conversation_from_json(mx_conversation *conv, const char *data, size_t len,
                              const char *label, mx_error *err) {
        json_error_t je;
        json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
        if (!root)
                return mx_error_set(err, -EINVAL, "%s: not valid JSON: %s (line %d, column %d)", label,
                                    je.text, je.line, je.column);
        json_t *arr = owner(conv);
        if (!arr || json_array_append_new(arr, root) < 0) {
                json_decref(root);
                return mx_error_set(err, -ENOMEM, "%s: out of memory", label);
        }
        if (!json_is_array(root))
                return mx_error_set(err, -EINVAL,
                                    "%s: expected a JSON array of {\"role\", \"content\"} objects", label);
        for (size_t i = 0; i < json_array_size(root); i++) {
                int r = parse_message(conv, json_array_get(root, i), i, label, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

void mx_conversation_free(mx_conversation *conv) {
        json_decref(conv->owner);
        free(conv->msgs);
        *conv = (mx_conversation){0};
}
