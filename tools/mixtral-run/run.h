/* mixtral-run's parts: private to the tool. */
#pragma once

#include <stdbool.h>

#include "mixtral.h"

typedef struct run_opts {
        const char *model, *tokenizer;
        const char *prompt, *prompt_file, *messages, *chat, *system;
        const char *make_demo, *decode;
        unsigned long long seed;
        bool tokenize, info, devices;
} run_opts;

/* Exit codes, stable for scripts. */
enum { EXIT_USAGE = 2 };

/* The prompt ids the options describe (BOS first). */
int run_prompt_ids(const run_opts *o, const mx_tokenizer *tok, mx_ids *ids, mx_error *err);
bool run_has_prompt(const run_opts *o);

int run_info(const mx_model *m);
int run_devices(void);
