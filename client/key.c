/* mixtral key new|list|revoke: API keys for mixtrald's HTTP API on TCP
 * (docs/http.md). Asked over the Unix socket, so a new key belongs to the
 * user the kernel says is asking. A new key is printed alone on stdout
 * (KEY=$(mixtral key new) works); the daemon keeps only its hash, so this
 * is the one time it is shown. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "mx_common.h"

static void print_created(const ProtobufCMessage *m) {
        const Mixtrald__V1__ApiKey *k = (const Mixtrald__V1__ApiKey *)m;
        printf("%s\n", k->secret ? k->secret : "");
        fprintf(stderr, "mixtral: API key %s made; it is shown this once (revoke it with 'mixtral key revoke %s')\n",
                k->id ? k->id : "?", k->id ? k->id : "ID");
}

static void print_list(const ProtobufCMessage *m) {
        const Mixtrald__V1__ApiKeys *l = (const Mixtrald__V1__ApiKeys *)m;
        if (!l->n_keys) {
                printf("no API keys (make one with 'mixtral key new')\n");
                return;
        }
        printf("%-12s  %-8s  %-23s  %s\n", "ID", "UID", "CREATED", "NAME");
        for (size_t i = 0; i < l->n_keys; i++) {
                const Mixtrald__V1__ApiKey *k = l->keys[i];
                char when[64];
                mxc_format_time(k->created_unix, when, sizeof(when));
                printf("%-12s  %-8u  %-23s  %s\n", k->id ? k->id : "?", k->uid, when, k->name ? k->name : "");
        }
}

static void print_revoked(const ProtobufCMessage *m) {
        const Mixtrald__V1__ApiKey *k = (const Mixtrald__V1__ApiKey *)m;
        printf("revoked API key %s\n", k->id ? k->id : "?");
}

int mxc_cmd_key(const mxc_opts *opts, char **words, size_t n) {
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        Mixtrald__V1__KeyNew kn = MIXTRALD__V1__KEY_NEW__INIT;
        Mixtrald__V1__KeyList kl = MIXTRALD__V1__KEY_LIST__INIT;
        Mixtrald__V1__KeyRevoke kr = MIXTRALD__V1__KEY_REVOKE__INIT;
        const char *sub = n ? words[0] : "";
        if (!strcmp(sub, "new") && n <= 2) {
                kn.name = n == 2 ? words[1] : NULL;
                req.kind_case = MIXTRALD__V1__REQUEST__KIND_KEY_NEW, req.key_new = &kn;
                return mxc_show(opts, &req, MIXTRALD__V1__RESPONSE__KIND_KEY_CREATED, print_created);
        }
        if (!strcmp(sub, "list") && n == 1) {
                req.kind_case = MIXTRALD__V1__REQUEST__KIND_KEY_LIST, req.key_list = &kl;
                return mxc_show(opts, &req, MIXTRALD__V1__RESPONSE__KIND_KEYS, print_list);
        }
        if (!strcmp(sub, "revoke") && n == 2) {
                kr.id = words[1];
                req.kind_case = MIXTRALD__V1__REQUEST__KIND_KEY_REVOKE, req.key_revoke = &kr;
                return mxc_show(opts, &req, MIXTRALD__V1__RESPONSE__KIND_KEY_REVOKED, print_revoked);
        }
        return mxc_usage_error("%s", "expected 'key new [NAME]', 'key list' or 'key revoke ID'");
}
