/* Stands in for mixtrald and its callers on a private bus, to test the D-Bus
 * policy file (systemd/dbus/org.mixtrald.Mixtral1.conf) as dbus-daemon
 * enforces it. Run under the uid to test:
 *
 *   own ADDRESS         request org.mixtrald.Mixtral1; print "owned" and serve
 *                       Ping on /org/mixtrald/Mixtral1 in interface
 *                       org.mixtrald.Mixtral1 (which also sends the caller a
 *                       Token signal, with the caller as its destination) and
 *                       in org.mixtrald.Test (not opened by the policy), for
 *                       at most 60 s; or print the bus's error and exit 3
 *   call ADDRESS        call org.mixtrald.Mixtral1.Ping; print the reply and
 *                       the Token signal that follows it
 *   call-other ADDRESS  call org.mixtrald.Test.Ping
 *
 * Errors are printed as their D-Bus names, exit status 3. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <time.h>

#define NAME "org.mixtrald.Mixtral1"
#define PATH "/org/mixtrald/Mixtral1"
#define IFACE "org.mixtrald.Mixtral1"
/* Requests' signals: what the daemon really sends, on its request objects. */
#define REQUEST_PATH "/org/mixtrald/Mixtral1/request/1"
#define REQUEST_IFACE "org.mixtrald.Mixtral1.Request"
#define OTHER_IFACE "org.mixtrald.Test"

static sd_bus *connect_to(const char *address) {
        sd_bus *bus = NULL;
        int r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                fprintf(stderr, "connecting to %s: %s\n", address, strerror(-r));
                exit(2);
        }
        return bus;
}

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int on_ping(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        sd_bus *bus = sd_bus_message_get_bus(m);
        sd_bus_message *sig = NULL;
        const char *caller = sd_bus_message_get_sender(m);
        int r = sd_bus_message_new_signal(bus, &sig, REQUEST_PATH, REQUEST_IFACE, "Token");
        if (r >= 0 && caller)
                r = sd_bus_message_set_destination(sig, caller);
        if (r >= 0)
                r = sd_bus_message_append(sig, "s", "hello");
        if (r >= 0)
                r = sd_bus_send(bus, sig, NULL);
        sd_bus_message_unref(sig);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "s", "pong");
}

static const sd_bus_vtable vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Ping", "", "s", on_ping, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static int own(const char *address) {
        sd_bus *bus = connect_to(address);
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                   "RequestName", &error, &reply, "su", NAME, 0u);
        if (r < 0) {
                printf("RequestName: %s\n", error.name ? error.name : strerror(-r));
                sd_bus_error_free(&error);
                sd_bus_flush_close_unref(bus);
                return 3;
        }
        uint32_t result = 0;
        sd_bus_message_read(reply, "u", &result);
        sd_bus_message_unref(reply);
        if (result != 1) { /* DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER */
                printf("RequestName: reply %u\n", result);
                sd_bus_flush_close_unref(bus);
                return 3;
        }
        if ((r = sd_bus_add_object_vtable(bus, NULL, PATH, IFACE, vtable, NULL)) < 0 ||
            (r = sd_bus_add_object_vtable(bus, NULL, PATH, OTHER_IFACE, vtable, NULL)) < 0) {
                fprintf(stderr, "vtable: %s\n", strerror(-r));
                sd_bus_flush_close_unref(bus);
                return 2;
        }
        printf("owned\n");
        fflush(stdout);
        uint64_t end = now_usec() + 60u * 1000000u;
        while (now_usec() < end) {
                r = sd_bus_process(bus, NULL);
                if (r < 0) {
                        fprintf(stderr, "process: %s\n", strerror(-r));
                        sd_bus_flush_close_unref(bus);
                        return 2;
                }
                if (r == 0)
                        sd_bus_wait(bus, 500000);
        }
        sd_bus_flush_close_unref(bus);
        return 0;
}

static int got_token;

static int on_token(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *text = NULL;
        if (sd_bus_message_read(m, "s", &text) >= 0) {
                printf("signal %s\n", text);
                got_token = 1;
        }
        return 0;
}

static int call_on(sd_bus *bus, const char *iface) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_match_signal(bus, NULL, NULL, REQUEST_PATH, REQUEST_IFACE, "Token", on_token, NULL);
        if (r < 0) {
                fprintf(stderr, "match: %s\n", strerror(-r));
                return 2;
        }
        r = sd_bus_call_method(bus, NAME, PATH, iface, "Ping", &error, &reply, "");
        if (r < 0) {
                printf("Ping: %s\n", error.name ? error.name : strerror(-r));
                if (error.message)
                        fprintf(stderr, "%s\n", error.message);
                sd_bus_error_free(&error);
                return 3;
        }
        const char *text = NULL;
        sd_bus_message_read(reply, "s", &text);
        printf("reply %s\n", text ? text : "(none)");
        sd_bus_message_unref(reply);
        if (strcmp(iface, IFACE))
                return 0;
        /* The signal was sent before the reply; it is queued or on its way. */
        uint64_t end = now_usec() + 5u * 1000000u;
        while (!got_token && now_usec() < end) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return 2;
                if (r == 0)
                        sd_bus_wait(bus, 100000);
        }
        if (!got_token) {
                printf("no Token signal\n");
                return 3;
        }
        return 0;
}

static int call(const char *address, const char *iface) {
        sd_bus *bus = connect_to(address);
        int r = call_on(bus, iface);
        sd_bus_flush_close_unref(bus);
        return r;
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: %s own|call|call-other ADDRESS\n", argv[0]);
                return 2;
        }
        if (!strcmp(argv[1], "own"))
                return own(argv[2]);
        if (!strcmp(argv[1], "call"))
                return call(argv[2], IFACE);
        if (!strcmp(argv[1], "call-other"))
                return call(argv[2], OTHER_IFACE);
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
}
