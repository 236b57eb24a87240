/* mixtrald on D-Bus: a private dbus-daemon configured like a system bus
 * (with our policy file included), the daemon on it with the demo model,
 * and callers over sd-bus and busctl. Signals reach only their caller;
 * each uid has its own quota; Cancel works; a caller that leaves has its
 * requests freed, but a forged NameOwnerChanged frees nothing; another
 * user's request object cannot be told from a missing one; bad options
 * get named errors; the introspection XML in
 * the repository is what the service says; D-Bus activation starts it.
 *
 *   test-dbus MIXTRALD DEMO_MODEL_DIR POLICY_FILE INTROSPECTION_XML */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>

#include "harness.h"
#include "test_util.h"

#define NAME "org.mixtrald.Mixtral1"
#define PATH "/org/mixtrald/Mixtral1"
#define ERR "org.mixtrald.Mixtral1.Error."

/* dbus-daemon turns away uids without a passwd entry, so two that Debian
 * always has: nobody and daemon. */
enum { ALICE = 65534, BOB = 1 };

static const char *mixtrald, *model, *policy, *xml_file;
static char bus_dir[256], bus_address[512];
static pid_t bus_pid = -1;
static dh_daemon d;

/* ---- the private bus ------------------------------------------------------ */

/* Like Debian's system.conf (default deny, then what policy files allow),
 * plus our policy. The test runs the daemon as root, which the policy does
 * not let own the name (only user mixtrald): a test-only rule grants it,
 * and a check below shows that without it root is refused. */
static int write_bus_config(const char *path, const char *type, bool grant_root, const char *servicedir) {
        FILE *f = fopen(path, "w");
        if (!f)
                return -errno;
        fprintf(f,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>%s</type>\n"
                "  <listen>unix:path=%s/%s.sock</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n"
                "    <allow user=\"*\"/>\n"
                "    <deny own=\"*\"/>\n"
                "    <deny send_type=\"method_call\"/>\n"
                "    <allow send_type=\"signal\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"method_return\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"error\"/>\n"
                "    <allow receive_type=\"method_call\"/>\n"
                "    <allow receive_type=\"method_return\"/>\n"
                "    <allow receive_type=\"error\"/>\n"
                "    <allow receive_type=\"signal\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\"\n"
                "           send_interface=\"org.freedesktop.DBus.Introspectable\"/>\n"
                "  </policy>\n"
                "  <include>%s</include>\n",
                type, bus_dir, type, policy);
        if (grant_root)
                fprintf(f, "  <policy user=\"root\"><allow own=\"" NAME "\"/></policy>\n");
        if (servicedir)
                fprintf(f, "  <servicedir>%s</servicedir>\n", servicedir);
        fprintf(f, "</busconfig>\n");
        return fclose(f) == 0 ? 0 : -EIO;
}

/* Starts dbus-daemon on config; its address into addr. */
static pid_t start_bus(const char *config, char *addr, size_t size) {
        int p[2];
        if (pipe(p) < 0)
                return -1;
        pid_t pid = fork();
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(p[1], STDOUT_FILENO);
                close(p[0]);
                char arg[600];
                snprintf(arg, sizeof(arg), "--config-file=%s", config);
                execlp("dbus-daemon", "dbus-daemon", arg, "--nofork", "--print-address", (char *)NULL);
                _exit(127);
        }
        close(p[1]);
        FILE *f = fdopen(p[0], "r");
        bool ok = f && fgets(addr, (int)size, f);
        if (f)
                fclose(f);
        if (!ok) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                return -1;
        }
        addr[strcspn(addr, "\n")] = '\0';
        return pid;
}

static sd_bus *connect_bus(const char *address) {
        sd_bus *b = NULL;
        if (sd_bus_new(&b) < 0)
                return NULL;
        if (sd_bus_set_address(b, address) < 0 || sd_bus_set_bus_client(b, 1) < 0 || sd_bus_start(b) < 0) {
                sd_bus_unref(b);
                return NULL;
        }
        return b;
}

/* ---- calls ------------------------------------------------------------------ */

/* Starts Generate; returns its request path (static) or NULL with the
 * error name in errname. Options: "raw", "seed", "max_tokens", "ignore_eos". */
static const char *generate(sd_bus *b, const char *prompt, uint64_t seed, uint32_t max_tokens, bool ignore_eos,
                            char *errname, size_t size) {
        static char path[128];
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(b, NAME, PATH, NAME, "Generate", &e, &reply, "sa{sv}", prompt, 4, "raw", "b", 1,
                                   "seed", "t", seed, "max_tokens", "u", max_tokens, "ignore_eos", "b", (int)ignore_eos);
        const char *p = NULL;
        if (r >= 0 && sd_bus_message_read(reply, "o", &p) >= 0)
                snprintf(path, sizeof(path), "%s", p);
        if (errname)
                snprintf(errname, size, "%s", r < 0 && e.name ? e.name : "");
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return p ? path : NULL;
}

typedef struct stream {
        const char *path;
        char text[65536];
        size_t len;
        char reason[32], failed[64];
        unsigned tokens;
        bool done;
} stream;

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        stream *s = userdata;
        if (!s->path || strcmp(sd_bus_message_get_path(m), s->path))
                return 0;
        const char *member = sd_bus_message_get_member(m), *a, *b;
        if (!strcmp(member, "Token") && sd_bus_message_read(m, "s", &a) >= 0) {
                size_t n = strlen(a);
                if (s->len + n < sizeof(s->text))
                        memcpy(s->text + s->len, a, n + 1), s->len += n;
                s->tokens++;
        } else if (!strcmp(member, "Finished") && sd_bus_message_read(m, "s", &a) >= 0) {
                snprintf(s->reason, sizeof(s->reason), "%s", a);
                s->done = true;
        } else if (!strcmp(member, "Failed") && sd_bus_message_read(m, "ss", &a, &b) >= 0) {
                snprintf(s->failed, sizeof(s->failed), "%s", a);
                s->done = true;
        }
        return 0;
}

/* Runs b's loop until s is done or ms pass. */
static void pump(sd_bus *b, stream *s, int ms) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
                int r = sd_bus_process(b, NULL);
                if (s && s->done)
                        return;
                if (r > 0)
                        continue;
                struct timespec t;
                clock_gettime(CLOCK_MONOTONIC, &t);
                long spent = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
                if (spent >= ms || r < 0)
                        return;
                sd_bus_wait(b, 20000);
        }
}

static int count_signal(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        (*(unsigned *)userdata)++;
        return 0;
}

static sd_bus_slot *watch(sd_bus *b, stream *s) {
        sd_bus_slot *slot = NULL;
        sd_bus_match_signal(b, &slot, NAME, NULL, "org.mixtrald.Mixtral1.Request", NULL, on_signal, s);
        return slot;
}

/* ---- tests ------------------------------------------------------------------- */

/* The same text over D-Bus as over the socket, and a second connection
 * listening for every signal of the service sees none of it. */
static void test_stream_to_caller_only(void) {
        sd_bus *a = connect_bus(bus_address), *other = connect_bus(bus_address);
        CHECK(a && other, "cannot connect to the test bus");
        if (!a || !other)
                return;
        stream s = {0};
        unsigned spied = 0;
        sd_bus_slot *slot = NULL, *spy_slot = NULL;
        /* Anything at all from the service that reaches the other connection. */
        sd_bus_match_signal(other, &spy_slot, NAME, NULL, "org.mixtrald.Mixtral1.Request", NULL, count_signal, &spied);
        /* Watch first: the first Token may come before Generate's reply is read. */
        slot = watch(a, &s);
        s.path = generate(a, "Once upon a time", 7, 24, true, NULL, 0);
        CHECK(s.path, "Generate failed");
        pump(a, &s, 20000);
        CHECK(s.done && !strcmp(s.reason, "length") && s.tokens > 0, "no Finished(length): '%s' '%s'", s.reason,
              s.failed);
        pump(other, NULL, 300);
        CHECK(spied == 0, "another connection saw %u of the caller's signals", spied);
        dh_gen g = {.prompt = "Once upon a time", .raw = true, .seed = 7, .max_tokens = 24, .ignore_eos = true};
        dh_result res = {0};
        CHECK(dh_run(&d, &g, &res) == 0 && res.text && !strcmp(res.text, s.text),
              "D-Bus text '%s' differs from the socket's '%s'", s.text, res.text ? res.text : "");
        dh_result_free(&res);
        sd_bus_slot_unref(slot), sd_bus_slot_unref(spy_slot);
        sd_bus_flush_close_unref(a), sd_bus_flush_close_unref(other);
}

/* GetStatus: the daemon streams its experts (expert_memory = 50%), and the
 * requests so far read some, within the budget. */
static void check_status(sd_bus *b) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(b, NAME, PATH, NAME, "GetStatus", &e, &reply, "");
        CHECK(r >= 0, "GetStatus failed: %s", e.message ? e.message : "");
        int streamed = 0;
        uint64_t hits = 0, misses = 0, budget = 0, configured = 0, resident = UINT64_MAX, bytes_read = 0;
        uint32_t slots = 0, running = 99;
        uint64_t kv_blocks = 0, kv_used = UINT64_MAX, kv_hit_tokens = 0;
        const char *state = NULL, *how = NULL, *kv_type = NULL;
        if (r >= 0 && sd_bus_message_enter_container(reply, 'a', "{sv}") > 0)
                while (sd_bus_message_enter_container(reply, 'e', "sv") > 0) {
                        const char *k;
                        sd_bus_message_read(reply, "s", &k);
                        struct {
                                const char *key, *sig;
                                void *dst;
                        } want[] = {{"state", "s", &state},          {"running", "u", &running},
                                    {"experts_streamed", "b", &streamed}, {"expert_hits", "t", &hits},
                                    {"expert_misses", "t", &misses},  {"expert_budget_bytes", "t", &budget},
                                    {"expert_configured_bytes", "t", &configured},
                                    {"expert_resident_bytes", "t", &resident},
                                    {"expert_bytes_read", "t", &bytes_read},
                                    {"expert_slots_per_layer", "u", &slots}, {"expert_how", "s", &how},
                                    {"kv_type", "s", &kv_type}, {"kv_blocks", "t", &kv_blocks},
                                    {"kv_used", "t", &kv_used}, {"kv_hit_tokens", "t", &kv_hit_tokens}};
                        size_t i = 0;
                        while (i < sizeof(want) / sizeof(want[0]) && strcmp(k, want[i].key))
                                i++;
                        if (i < sizeof(want) / sizeof(want[0]))
                                CHECK(sd_bus_message_read(reply, "v", want[i].sig, want[i].dst) > 0, "%s: not %s", k,
                                      want[i].sig);
                        else
                                sd_bus_message_skip(reply, "v");
                        sd_bus_message_exit_container(reply);
                }
        CHECK(state && !strcmp(state, "serving") && running == 0, "GetStatus: state %s, %u running",
              state ? state : "(none)", running);
        CHECK(kv_type && !strcmp(kv_type, "bf16") && kv_blocks > 0 && kv_used == 0 && kv_hit_tokens > 0,
              "GetStatus: KV cache %s, %llu blocks, %llu used, %llu tokens served", kv_type ? kv_type : "(none)",
              (unsigned long long)kv_blocks, (unsigned long long)kv_used, (unsigned long long)kv_hit_tokens);
        CHECK(streamed && hits + misses > 0 && misses > 0 && bytes_read > 0,
              "GetStatus: streamed %d, %llu hits, %llu misses, %llu bytes read", streamed,
              (unsigned long long)hits, (unsigned long long)misses, (unsigned long long)bytes_read);
        CHECK(budget > 0 && budget <= configured && resident <= budget && slots >= 2 && how &&
                      strstr(how, "LFU"),
              "GetStatus: budget %llu of %llu configured, %llu resident, %u per layer, how '%s'",
              (unsigned long long)budget, (unsigned long long)configured, (unsigned long long)resident, slots,
              how ? how : "");
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
}

/* Complete("Hello"): its usage dict's token counts. */
static void complete_hello(sd_bus *b, uint32_t usage[3]) {
        static const char *const keys[] = {"prompt_tokens", "completion_tokens", "cached_prompt_tokens"};
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(b, NAME, PATH, NAME, "Complete", &e, &reply, "sa{sv}", "Hello", 2, "max_tokens",
                                   "u", 5, "ignore_eos", "b", 1);
        const char *text = NULL;
        CHECK(r >= 0 && sd_bus_message_read(reply, "s", &text) >= 0 && text && *text, "Complete failed: %s",
              e.message ? e.message : "");
        usage[0] = usage[1] = usage[2] = UINT32_MAX;
        if (r >= 0 && sd_bus_message_enter_container(reply, 'a', "{sv}") > 0)
                while (sd_bus_message_enter_container(reply, 'e', "sv") > 0) {
                        const char *k;
                        sd_bus_message_read(reply, "s", &k);
                        size_t i = 0;
                        while (i < 3 && strcmp(k, keys[i]))
                                i++;
                        if (i < 3)
                                sd_bus_message_read(reply, "v", "u", &usage[i]);
                        else
                                sd_bus_message_skip(reply, "v");
                        sd_bus_message_exit_container(reply);
                }
        sd_bus_message_unref(reply);
        sd_bus_error_free(&e);
}

static void test_complete_quota_properties(void) {
        sd_bus *b = connect_bus(bus_address);
        if (!b) {
                CHECK(0, "cannot connect to the test bus");
                return;
        }
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        /* The same question again: all of its prompt but the last token
         * comes from the KV cache, and the usage says so. */
        uint32_t first[3], again[3];
        complete_hello(b, first);
        complete_hello(b, again);
        CHECK(first[1] == 5, "Complete's usage says %u completion tokens, not 5", first[1]);
        CHECK(first[2] < again[2] && again[0] == first[0] && again[2] == again[0] - 1,
              "cached_prompt_tokens: %u, then %u of %u", first[2], again[2], again[0]);
        int r;

        r = sd_bus_call_method(b, NAME, PATH, NAME, "Chat", &e, &reply, "a(ss)a{sv}", 2, "user", "Hi", "assistant",
                               "Hello", 1, "max_tokens", "u", 3);
        CHECK(r < 0 && sd_bus_error_has_name(&e, ERR "InvalidArgument"),
              "a conversation ending with the assistant was not refused: %s", e.name ? e.name : "accepted");
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply), reply = NULL;

        r = sd_bus_call_method(b, NAME, PATH, NAME, "GetQuota", &e, &reply, "");
        CHECK(r >= 0, "GetQuota failed: %s", e.message ? e.message : "");
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        check_status(b);

        char *model_prop = NULL, *state = NULL;
        CHECK(sd_bus_get_property_string(b, NAME, PATH, NAME, "Model", &e, &model_prop) >= 0 && model_prop &&
                      strstr(model_prop, "demo-model"),
              "the Model property is '%s'", model_prop ? model_prop : "");
        CHECK(sd_bus_get_property_string(b, NAME, PATH, NAME, "State", &e, &state) >= 0 && state &&
                      !strcmp(state, "serving"),
              "the State property is '%s'", state ? state : "");
        free(model_prop), free(state);
        sd_bus_error_free(&e);
        sd_bus_flush_close_unref(b);
}

/* One option, expecting the named error. */
static void expect_error(sd_bus *b, const char *what, const char *key, const char *type, const void *value,
                         const char *error) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL, *reply = NULL;
        int r = sd_bus_message_new_method_call(b, &m, NAME, PATH, NAME, "Generate");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", "hello");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && key) {
                sd_bus_message_open_container(m, 'e', "sv");
                sd_bus_message_append(m, "s", key);
                sd_bus_message_open_container(m, 'v', type);
                if (!strcmp(type, "s"))
                        sd_bus_message_append(m, "s", (const char *)value);
                else if (!strcmp(type, "d"))
                        sd_bus_message_append(m, "d", *(const double *)value);
                else
                        sd_bus_message_append_basic(m, type[0], value);
                sd_bus_message_close_container(m);
                r = sd_bus_message_close_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_call(b, m, 0, &e, &reply);
        CHECK(r < 0 && sd_bus_error_has_name(&e, error), "%s: got %s (%s), expected %s", what,
              e.name ? e.name : "success", e.message ? e.message : "", error);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m), sd_bus_message_unref(reply);
}

static void test_bad_options(void) {
        sd_bus *b = connect_bus(bus_address);
        if (!b) {
                CHECK(0, "cannot connect to the test bus");
                return;
        }
        double neg = -1, nan_v = 0.0 / 0.0, big = 1e300;
        int32_t five = 5;
        uint32_t zero = 0;
        expect_error(b, "temperature as a string", "temperature", "s", "hot", ERR "InvalidArgument");
        expect_error(b, "negative temperature", "temperature", "d", &neg, ERR "InvalidArgument");
        expect_error(b, "NaN temperature", "temperature", "d", &nan_v, ERR "InvalidArgument");
        expect_error(b, "huge temperature", "temperature", "d", &big, ERR "InvalidArgument");
        expect_error(b, "top_p 0", "top_p", "d", &(double){0}, ERR "InvalidArgument");
        expect_error(b, "max_tokens as int32", "max_tokens", "i", &five, ERR "InvalidArgument");
        expect_error(b, "top_k as a double", "top_k", "d", &neg, ERR "InvalidArgument");
        expect_error(b, "unknown option", "verbosity", "u", &zero, ERR "InvalidArgument");
        /* About 6000 tokens: past the demo model's context. */
        static char long_prompt[30000];
        for (size_t i = 0; i + 5 < sizeof(long_prompt); i += 5)
                memcpy(long_prompt + i, "word ", 5);
        char name[128];
        CHECK(!generate(b, long_prompt, 1, 4, false, name, sizeof(name)) && !strcmp(name, ERR "TooLong"),
              "a prompt longer than the context got '%s', not TooLong", name);
        sd_bus_flush_close_unref(b);
}

static void test_cancel_and_leave(void) {
        sd_bus *b = connect_bus(bus_address);
        if (!b) {
                CHECK(0, "cannot connect to the test bus");
                return;
        }
        stream s = {0};
        sd_bus_slot *slot = watch(b, &s);
        s.path = generate(b, "go on", 3, 0, true, NULL, 0);
        CHECK(s.path, "Generate failed");
        pump(b, NULL, 100);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_call_method(b, NAME, PATH, NAME, "Cancel", &e, NULL, "o", s.path);
        CHECK(r >= 0, "Cancel failed: %s", e.message ? e.message : "");
        sd_bus_error_free(&e);
        pump(b, &s, 10000);
        CHECK(s.done && !strcmp(s.failed, "Cancelled"), "the cancelled request ended with '%s' '%s'", s.reason,
              s.failed);
        r = sd_bus_call_method(b, NAME, PATH, NAME, "Cancel", &e, NULL, "o", s.path);
        CHECK(r < 0 && sd_bus_error_has_name(&e, ERR "NotFound"), "cancelling it again is not NotFound");
        sd_bus_error_free(&e);
        sd_bus_slot_unref(slot);
        sd_bus_flush_close_unref(b);

        /* A caller that leaves mid-request: the request goes with it. */
        sd_bus *gone = connect_bus(bus_address);
        CHECK(gone && generate(gone, "go on", 4, 0, true, NULL, 0), "Generate failed");
        Mixtrald__V1__Response *st = dh_status(&d);
        CHECK(st && st->status->running + st->status->queued == 1, "the request is not running");
        if (st)
                mixtrald__v1__response__free_unpacked(st, NULL);
        sd_bus_flush_close_unref(gone);
        bool idle = false;
        for (int i = 0; i < 200 && !idle; i++) {
                st = dh_status(&d);
                idle = st && st->status->running + st->status->queued == 0;
                if (st)
                        mixtrald__v1__response__free_unpacked(st, NULL);
                usleep(10000);
        }
        CHECK(idle, "a caller that left the bus still has a request running");
}

/* Anyone may send a NameOwnerChanged signal to the service: a forged one
 * saying the caller left must not cancel the caller's request. */
static void test_forged_name_owner_changed(void) {
        sd_bus *victim = connect_bus(bus_address), *forger = connect_bus(bus_address);
        CHECK(victim && forger, "cannot connect to the test bus");
        if (!victim || !forger)
                return;
        stream s = {0};
        sd_bus_slot *slot = watch(victim, &s);
        s.path = generate(victim, "keep going", 6, 200, true, NULL, 0);
        CHECK(s.path, "Generate failed");
        const char *who = NULL;
        sd_bus_get_unique_name(victim, &who);
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_signal(forger, &m, "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                          "NameOwnerChanged");
        if (r >= 0)
                r = sd_bus_message_set_destination(m, NAME);
        if (r >= 0)
                r = sd_bus_message_append(m, "sss", who, who, "");
        if (r >= 0)
                r = sd_bus_send(forger, m, NULL);
        sd_bus_message_unref(m);
        CHECK(r >= 0, "cannot send the forged signal: %s", strerror(-r));
        sd_bus_flush(forger);
        pump(victim, &s, 30000);
        CHECK(s.done && !strcmp(s.reason, "length") && !s.failed[0],
              "a forged NameOwnerChanged ended the victim's request ('%s' '%s')", s.reason, s.failed);
        sd_bus_slot_unref(slot);
        sd_bus_flush_close_unref(victim);
        sd_bus_flush_close_unref(forger);
}

/* Introspecting another user's request says no more than introspecting
 * one that never existed. */
static int introspect_to(void *arg) {
        int *p = arg;
        char path[128];
        ssize_t n = read(p[0], path, sizeof(path) - 1);
        if (n <= 0)
                return 2;
        path[n] = '\0';
        sd_bus *b = connect_bus(bus_address);
        if (!b)
                return 3;
        sd_bus_error e1 = SD_BUS_ERROR_NULL, e2 = SD_BUS_ERROR_NULL;
        sd_bus_message *r1 = NULL, *r2 = NULL;
        int a = sd_bus_call_method(b, NAME, path, "org.freedesktop.DBus.Introspectable", "Introspect", &e1, &r1, "");
        int z = sd_bus_call_method(b, NAME, "/org/mixtrald/Mixtral1/request/987654321",
                                   "org.freedesktop.DBus.Introspectable", "Introspect", &e2, &r2, "");
        const char *x1 = "", *x2 = "";
        if (a >= 0)
                sd_bus_message_read(r1, "s", &x1);
        if (z >= 0)
                sd_bus_message_read(r2, "s", &x2);
        bool same = (a >= 0) == (z >= 0) && !strcmp(x1, x2) && (a >= 0 || sd_bus_error_has_name(&e1, e2.name));
        if (!same)
                fprintf(stderr, "[uid %u] someone else's request: %d %s %.80s; none: %d %s %.80s\n", getuid(), a,
                        e1.name ? e1.name : "", x1, z, e2.name ? e2.name : "", x2);
        sd_bus_error_free(&e1), sd_bus_error_free(&e2);
        sd_bus_message_unref(r1), sd_bus_message_unref(r2);
        sd_bus_flush_close_unref(b);
        return same ? 0 : 1;
}

/* The number of running requests GetStatus reports, or -1. */
static int running_requests(sd_bus *b) {
        sd_bus_message *reply = NULL;
        int running = -1;
        if (sd_bus_call_method(b, NAME, PATH, NAME, "GetStatus", NULL, &reply, "") >= 0 &&
            sd_bus_message_enter_container(reply, 'a', "{sv}") > 0)
                while (sd_bus_message_enter_container(reply, 'e', "sv") > 0) {
                        const char *k;
                        uint32_t n;
                        if (sd_bus_message_read(reply, "s", &k) > 0 && !strcmp(k, "running") &&
                            sd_bus_message_read(reply, "v", "u", &n) > 0)
                                running = (int)n;
                        else
                                sd_bus_message_skip(reply, "v");
                        sd_bus_message_exit_container(reply);
                }
        sd_bus_message_unref(reply);
        return running;
}

/* Cancel answers at once and the request retires on the scheduler's next
 * step; a test that counts budget must start after that, or the cancelled
 * request still holds its reservation (seen under TSan's slower steps). */
static bool wait_until_idle(void) {
        sd_bus *b = connect_bus(bus_address);
        bool idle = false;
        for (int i = 0; b && i < 500 && !idle; i++) {
                idle = running_requests(b) == 0;
                if (!idle)
                        usleep(20 * 1000);
        }
        sd_bus_flush_close_unref(b);
        return idle;
}

static int hold_request(void *arg) {
        int *p = arg;
        sd_bus *b = connect_bus(bus_address);
        const char *path = b ? generate(b, "a private matter", 7, 0, true, NULL, 0) : NULL;
        if (!path || write(p[1], path, strlen(path)) < 0)
                return 2;
        char go;
        (void)!read(p[2], &go, 1); /* until the other looked */
        sd_bus_call_method(b, NAME, PATH, NAME, "Cancel", NULL, NULL, "o", path);
        sd_bus_flush_close_unref(b);
        return 0;
}

static void test_request_objects_private(void) {
        if (geteuid() != 0) {
                printf("request objects private: skipped (needs root to switch uids)\n");
                return;
        }
        int p[2], go[2];
        CHECK(pipe(p) == 0 && pipe(go) == 0, "pipe");
        int fds[3] = {p[0], p[1], go[0]};
        fflush(NULL);
        pid_t holder = fork();
        if (holder == 0)
                _exit(dh_drop_to(ALICE, ALICE) < 0 ? 99 : hold_request(fds));
        int r = dh_as_user(BOB, BOB, introspect_to, fds);
        CHECK(r == 0, "another user's request object answers differently from a missing one (%d)", r);
        CHECK(write(go[1], "g", 1) == 1, "pipe");
        int st;
        waitpid(holder, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the request's owner failed");
        CHECK(wait_until_idle(), "the cancelled request still runs after 10 s");
        close(p[0]), close(p[1]), close(go[0]), close(go[1]);
}

/* Runs as uid: Complete until QuotaExceeded (exit 0 when it came, with
 * the budget respected), or one Complete that must succeed (arg). */
static int spend(void *arg) {
        sd_bus *b = connect_bus(bus_address);
        if (!b)
                return 2;
        bool once = arg != NULL;
        for (int i = 0; i < 40; i++) {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                int r = sd_bus_call_method(b, NAME, PATH, NAME, "Complete", &e, NULL, "sa{sv}", "spend tokens", 2,
                                           "max_tokens", "u", 20, "ignore_eos", "b", 1);
                bool quota = r < 0 && sd_bus_error_has_name(&e, ERR "QuotaExceeded");
                if (r < 0 && !quota)
                        fprintf(stderr, "[uid %u] Complete: %s %s\n", getuid(), e.name, e.message);
                sd_bus_error_free(&e);
                if (once)
                        return r >= 0 ? 0 : 3;
                if (quota)
                        return i >= 2 ? 0 : 4;
                if (r < 0)
                        return 5;
        }
        return 6;
}

static void test_quotas_per_uid(void) {
        if (geteuid() != 0) {
                printf("quotas per uid: skipped (needs root to switch uids)\n");
                return;
        }
        int r = dh_as_user(ALICE, ALICE, spend, NULL);
        CHECK(r == 0, "Alice's budget was not enforced over D-Bus (%d)", r);
        r = dh_as_user(BOB, BOB, spend, (void *)1);
        CHECK(r == 0, "Bob was refused for Alice's usage (%d)", r);
}

/* The interface block named name, whitespace at line starts removed. */
static char *interface_block(const char *xml, const char *name) {
        char open[128];
        snprintf(open, sizeof(open), "<interface name=\"%s\">", name);
        const char *a = strstr(xml, open), *b = a ? strstr(a, "</interface>") : NULL;
        if (!b)
                return NULL;
        char *out = malloc((size_t)(b - a) + 1), *o = out;
        bool line_start = true;
        for (const char *p = a; p < b; p++) {
                if (line_start && (*p == ' ' || *p == '\t'))
                        continue;
                line_start = *p == '\n';
                *o++ = *p;
        }
        *o = '\0';
        return out;
}

static char *read_all(const char *path) {
        FILE *f = fopen(path, "r");
        if (!f)
                return NULL;
        char *buf = calloc(1, 1 << 16);
        size_t n = fread(buf, 1, (1 << 16) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

static char *introspect(sd_bus *b, const char *path) {
        sd_bus_message *reply = NULL;
        const char *xml = NULL;
        char *out = NULL;
        if (sd_bus_call_method(b, NAME, path, "org.freedesktop.DBus.Introspectable", "Introspect", NULL, &reply, "") >= 0 &&
            sd_bus_message_read(reply, "s", &xml) >= 0)
                out = strdup(xml);
        sd_bus_message_unref(reply);
        return out;
}

static void test_introspection(void) {
        sd_bus *b = connect_bus(bus_address);
        char *repo = read_all(xml_file);
        CHECK(b && repo, "cannot read %s or connect", xml_file);
        if (!b || !repo)
                return;
        char *live = introspect(b, PATH);
        const char *path = generate(b, "go on", 5, 0, true, NULL, 0);
        char *live_req = path ? introspect(b, path) : NULL;
        if (path)
                sd_bus_call_method(b, NAME, PATH, NAME, "Cancel", NULL, NULL, "o", path);
        const char *names[] = {NAME, "org.mixtrald.Mixtral1.Request"};
        char *lives[] = {live, live_req};
        for (int i = 0; i < 2; i++) {
                char *want = interface_block(repo, names[i]), *got = lives[i] ? interface_block(lives[i], names[i]) : NULL;
                CHECK(want && got && !strcmp(want, got), "%s in %s differs from the running service's:\n%s", names[i],
                      xml_file, got ? got : "(none)");
                free(want), free(got);
        }
        free(live), free(live_req), free(repo);
        sd_bus_flush_close_unref(b);
}

/* busctl, as a shell user would type it. */
static void test_busctl(void) {
        char cmd[1024], out[4096] = "";
        snprintf(cmd, sizeof(cmd),
                 "busctl --address='%s' call " NAME " " PATH " " NAME " Complete 'sa{sv}' Hello 3 max_tokens u 4 "
                 "raw b true ignore_eos b true 2>&1",
                 bus_address);
        FILE *p = popen(cmd, "r");
        size_t n = p ? fread(out, 1, sizeof(out) - 1, p) : 0;
        out[n] = '\0';
        int st = p ? pclose(p) : -1;
        CHECK(st == 0 && !strncmp(out, "sa{sv} \"", 8) && strstr(out, "\"completion_tokens\" u 4"),
              "busctl Complete: %s", out);
        snprintf(cmd, sizeof(cmd),
                 "busctl --address='%s' call " NAME " " PATH " " NAME " Generate 'sa{sv}' Hello 1 temperature s hot 2>&1",
                 bus_address);
        p = popen(cmd, "r");
        n = p ? fread(out, 1, sizeof(out) - 1, p) : 0;
        out[n] = '\0';
        st = p ? pclose(p) : -1;
        CHECK(st != 0 && strstr(out, "option 'temperature' must be of type 'd'"), "busctl with a bad option: %s", out);
}

/* The policy alone (no test grant) refuses root the name. */
static void test_policy_denies_root(void) {
        char conf[300], addr[512];
        snprintf(conf, sizeof(conf), "%s/strict.conf", bus_dir);
        CHECK(write_bus_config(conf, "strict", false, NULL) == 0, "write config");
        /* The "type" doubles as the socket's name: strict.sock. */
        pid_t pid = start_bus(conf, addr, sizeof(addr));
        CHECK(pid > 0, "dbus-daemon did not accept the configuration with our policy");
        if (pid <= 0)
                return;
        sd_bus *b = connect_bus(addr);
        int r = b ? sd_bus_request_name(b, NAME, 0) : -ENOTCONN;
        CHECK(r == -EACCES || r == -EPERM, "root could own " NAME " under the policy: %d", r);
        sd_bus_flush_close_unref(b);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
}

/* A session-style bus that starts the daemon on the first call. */
static void test_activation(void) {
        char conf[300], dir[300], service[400], addr[512], log[300];
        snprintf(dir, sizeof(dir), "%s/services", bus_dir);
        snprintf(conf, sizeof(conf), "%s/activation.conf", bus_dir);
        snprintf(log, sizeof(log), "%s/activated.log", bus_dir);
        mkdir(dir, 0755);
        FILE *f = fopen(conf, "w");
        fprintf(f,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig><type>session</type><listen>unix:path=%s/activation.sock</listen>\n"
                "<auth>EXTERNAL</auth><servicedir>%s</servicedir>\n"
                "<policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "<allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                bus_dir, dir);
        fclose(f);
        snprintf(service, sizeof(service), "%s/" NAME ".service", dir);
        f = fopen(service, "w");
        fprintf(f,
                "[D-BUS Service]\nName=" NAME "\n"
                "Exec=/bin/sh -c 'exec %s --model %s --bus session --socket %s/activated.sock --config %s "
                "--state-directory %s/activated-state 2>%s'\n",
                mixtrald, model, bus_dir, d.config, bus_dir, log);
        fclose(f);
        pid_t pid = start_bus(conf, addr, sizeof(addr));
        CHECK(pid > 0, "the activation bus did not start");
        if (pid <= 0)
                return;
        setenv("DBUS_SESSION_BUS_ADDRESS", addr, 1);
        sd_bus *b = connect_bus(addr);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = b ? sd_bus_call_method(b, NAME, PATH, NAME, "Complete", &e, &reply, "sa{sv}", "wake up", 2, "max_tokens",
                                       "u", 3, "ignore_eos", "b", 1)
                  : -ENOTCONN;
        CHECK(r >= 0, "activation did not start the daemon: %s (%s)", e.name ? e.name : strerror(-r),
              e.message ? e.message : "");
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        /* Stop it through its pid as the bus knows it. */
        uint32_t daemon_pid = 0;
        reply = NULL;
        if (b && sd_bus_call_method(b, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                    "GetConnectionUnixProcessID", NULL, &reply, "s", NAME) >= 0)
                sd_bus_message_read(reply, "u", &daemon_pid);
        sd_bus_message_unref(reply);
        if (daemon_pid > 1)
                kill((pid_t)daemon_pid, SIGTERM);
        sd_bus_flush_close_unref(b);
        for (int i = 0; i < 200 && daemon_pid > 1 && kill((pid_t)daemon_pid, 0) == 0; i++)
                usleep(10000);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
        if (argc != 5) {
                fprintf(stderr, "usage: test-dbus MIXTRALD DEMO_MODEL_DIR POLICY_FILE INTROSPECTION_XML\n");
                return 2;
        }
        mixtrald = argv[1], model = argv[2], policy = argv[3], xml_file = argv[4];
        if (access("/usr/bin/dbus-daemon", X_OK) != 0 && access("/bin/dbus-daemon", X_OK) != 0)
                test_skip("dbus-daemon is not installed");
        signal(SIGPIPE, SIG_IGN);
        snprintf(bus_dir, sizeof(bus_dir), "/tmp/mixtrald-dbus-XXXXXX");
        if (!mkdtemp(bus_dir))
                return 1;
        chmod(bus_dir, 0755);
        char conf[300];
        snprintf(conf, sizeof(conf), "%s/system.conf", bus_dir);
        CHECK(write_bus_config(conf, "system", true, NULL) == 0, "write the bus config");
        bus_pid = start_bus(conf, bus_address, sizeof(bus_address));
        if (bus_pid <= 0) {
                fprintf(stderr, "dbus-daemon did not start with %s\n", conf);
                return 1;
        }
        char env[600];
        snprintf(env, sizeof(env), "DBUS_SYSTEM_BUS_ADDRESS=%s", bus_address);
        const char *envs[] = {env, NULL};
        static const char *const args[] = {"--bus", "system", NULL};
        CHECK(dh_init(&d, mixtrald, model,
                      "[daemon]\nthreads = 1\nexpert_memory = 50%\n[quota]\ntokens_per_hour = 150\n"
                      "max_concurrent = 2\n") == 0,
              "init");
        d.args = args;
        if (dh_start(&d, envs) < 0) {
                kill(bus_pid, SIGKILL);
                return 1;
        }
        struct {
                const char *name;
                void (*fn)(void);
        } tests[] = {
                {"signals only to the caller", test_stream_to_caller_only},
                {"complete, quota, properties", test_complete_quota_properties},
                {"bad options", test_bad_options},
                {"cancel and leaving the bus", test_cancel_and_leave},
                {"forged NameOwnerChanged", test_forged_name_owner_changed},
                {"request objects private", test_request_objects_private},
                {"quotas per uid", test_quotas_per_uid},
                {"introspection", test_introspection},
                {"busctl", test_busctl},
                {"policy denies root", test_policy_denies_root},
                {"activation", test_activation},
        };
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
                int before = test_failures;
                tests[i].fn();
                printf("%s: %s\n", tests[i].name, test_failures == before ? "ok" : "FAILED");
                fflush(stdout);
        }
        CHECK(dh_stop(&d) == 0, "the daemon did not exit 0");
        if (test_failures)
                dh_show_log(&d, 30);
        dh_cleanup(&d);
        kill(bus_pid, SIGTERM);
        waitpid(bus_pid, NULL, 0);
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", bus_dir);
        (void)!system(cmd);
        return test_result();
}
