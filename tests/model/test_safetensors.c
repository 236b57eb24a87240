/* The safetensors header parser on well-formed and malformed files held in
 * memory: each malformation is refused with a one-line message naming the
 * file and, where there is one, the tensor. */
#include <fcntl.h>

#include "mixtral.h"
#include "test_util.h"

/* 8-byte little-endian header length, the header, data_len bytes of data. */
static uint8_t *make_file(const char *header, uint64_t hlen_field, size_t data_len, size_t *size) {
        size_t h = strlen(header);
        *size = 8 + h + data_len;
        uint8_t *f = calloc(1, *size + 1);
        for (int i = 0; i < 8; i++)
                f[i] = (uint8_t)(hlen_field >> (8 * i));
        memcpy(f + 8, header, h);
        for (size_t i = 0; i < data_len; i++)
                f[8 + h + i] = (uint8_t)i;
        return f;
}

static int parse(const char *header, size_t data_len, mx_tensor **t, size_t *n, mx_error *err) {
        size_t size;
        uint8_t *f = make_file(header, strlen(header), data_len, &size);
        int r = mx_safetensors_parse(f, size, "x.safetensors", t, n, err);
        if (r == 0)
                mx_tensors_free(*t, *n);
        free(f);
        return r;
}

static void expect_refused(const char *header, size_t data_len, const char *needle) {
        mx_tensor *t = NULL;
        size_t n = 0;
        mx_error err = {0};
        int r = parse(header, data_len, &t, &n, &err);
        CHECK(r < 0 && strncmp(err.msg, "x.safetensors: ", 15) == 0 && strstr(err.msg, needle) &&
                      !strchr(err.msg, '\n'),
              "header %s: expected \"%s\", got %d \"%s\"", header, needle, r, err.msg);
}

static void expect_ok(const char *header, size_t data_len) {
        mx_tensor *t = NULL;
        size_t n = 0;
        mx_error err = {0};
        CHECK(parse(header, data_len, &t, &n, &err) == 0, "header %s: %s", header, err.msg);
}

static void framing(void) {
        mx_tensor *t;
        size_t n, size;
        mx_error err = {0};
        CHECK(mx_safetensors_parse((const uint8_t *)"1234567", 7, "x.safetensors", &t, &n, &err) < 0 &&
                      strstr(err.msg, "too short"), "%s", err.msg);
        uint8_t *f = make_file("{}", 100000001ull, 0, &size);
        CHECK(mx_safetensors_parse(f, size, "x.safetensors", &t, &n, &err) < 0 &&
                      strstr(err.msg, "header length 100000001 is over the 100000000-byte limit"), "%s", err.msg);
        free(f);
        f = make_file("{}", 3, 0, &size);
        CHECK(mx_safetensors_parse(f, size, "x.safetensors", &t, &n, &err) < 0 &&
                      strstr(err.msg, "header length 3 runs past the end of the 10-byte file"), "%s", err.msg);
        free(f);
        f = make_file("{}", UINT64_MAX, 0, &size);
        CHECK(mx_safetensors_parse(f, size, "x.safetensors", &t, &n, &err) < 0 &&
                      strstr(err.msg, "over the"), "%s", err.msg);
        free(f);
        expect_refused("{\"a\xff\":1}", 0, "header is not valid UTF-8 (byte 11)");
        expect_refused("{\"a\xed\xa0\x80\":1}", 0, "not valid UTF-8");
        expect_refused("{\"a\":", 0, "header is not valid JSON");
        expect_refused("{} x", 0, "not valid JSON");
        expect_refused("[]", 0, "header is not a JSON object");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       8, "duplicate tensor '\"a\"'");
        /* Padding with spaces after the JSON is part of the format. */
        expect_ok("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}      ", 4);
        expect_ok("{}", 0);
        expect_ok("{\"__metadata__\":{\"format\":\"pt\"}}", 0);
}

static void entries(void) {
        expect_refused("{\"w\":3}", 0, "tensor \"w\": entry is not a JSON object");
        expect_refused("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"w\": \"dtype\" is missing");
        expect_refused("{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       "tensor \"w\": unknown dtype \"Q4_K\"");
        expect_refused("{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"w\": dtype I64 is not supported");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "\"shape\" is missing");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                       "dimension 0 of \"shape\" is not a non-negative integer");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                       "dimension 0");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                       "5 dimensions");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "\"data_offsets\" is not a pair");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "not a pair");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4, "not a pair");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
                       "tensor \"w\": data_offsets [8, 4] are out of order");
        expect_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"w\": data_offsets span 8 bytes but its shape of F32 needs 12");
        expect_refused("{\"w\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}",
                       8, "shape overflows");
        expect_refused("{\"__metadata__\":{\"n\":1}}", 0, "__metadata__ \"n\" is not a string");
        expect_refused("{\"__metadata__\":[]}", 0, "\"__metadata__\" is not an object");
        expect_refused("{\"a\\u0001b\\nc\":3}", 0, "tensor \"a?b?c\"");
}

static void layout(void) {
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       12, "tensor \"b\": data at offset 4 overlaps \"a\"");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                       24, "tensor \"b\": gap of 8 bytes before its data at offset 16");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                       "tensor \"a\": gap of 4 bytes");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                       "tensor \"a\": data ends at 16, past the end of the file's 8 data bytes");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16,
                       "8 bytes of data after the last tensor belong to none");
        expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[9223372036854775800,9223372036854775807]}}",
                       0, "data_offsets span");
        /* Header order need not be data order; empty tensors take no room. */
        expect_ok("{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                  "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[8,8]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  12);
}

/* What a good header gives: tensors in data order, pointing into the file. */
static void results(void) {
        const char *h = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[8,20]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        size_t size, n = 0;
        uint8_t *f = make_file(h, strlen(h), 20, &size);
        mx_tensor *t = NULL;
        mx_error err = {0};
        CHECK(mx_safetensors_parse(f, size, "x.safetensors", &t, &n, &err) == 0 && n == 2, "%s", err.msg);
        if (n == 2) {
                uint64_t base = 8 + strlen(h);
                CHECK(strcmp(t[0].name, "a") == 0 && t[0].dtype == MX_DTYPE_F32 && t[0].ndim == 1 &&
                              t[0].shape[0] == 2 && t[0].offset == base && t[0].nbytes == 8 &&
                              t[0].data == f + base, "tensor a");
                CHECK(strcmp(t[1].name, "b") == 0 && t[1].dtype == MX_DTYPE_BF16 && t[1].ndim == 2 &&
                              t[1].shape[1] == 3 && t[1].data == f + base + 8 && t[1].nbytes == 12 &&
                              ((const uint8_t *)t[1].data)[0] == 8, "tensor b");
                CHECK(mx_tensor_row(&t[1], 1) == f + base + 8 + 6, "row 1 of b");
        }
        mx_tensors_free(t, n);
        free(f);
}

/* The writer's files read back as written. */
static void writer_roundtrip(void) {
        char path[] = "/tmp/mx-st-XXXXXX";
        int fd = mkstemp(path);
        close(fd);
        uint16_t a[6] = {1, 2, 3, 4, 5, 6};
        float b[2] = {1.5f, -2.0f};
        mx_tensor_data td[2] = {{"w.a", MX_DTYPE_BF16, 2, {2, 3}, a}, {"w.b", MX_DTYPE_F32, 1, {2}, b}};
        mx_error err = {0};
        CHECK(mx_safetensors_write(path, td, 2, &err) == 0, "%s", err.msg);
        char *data = NULL;
        size_t len = 0, n = 0;
        mx_tensor *t = NULL;
        CHECK(mx_read_file(path, 1 << 20, &data, &len, &err) == 0, "%s", err.msg);
        CHECK(len > 8 && (8 + (data[0] & 0xff)) % 8 == 0, "header padded to 8 bytes");
        CHECK(mx_safetensors_parse((const uint8_t *)data, len, path, &t, &n, &err) == 0 && n == 2,
              "%s", err.msg);
        if (n == 2)
                CHECK(memcmp(t[0].data, a, sizeof(a)) == 0 && memcmp(t[1].data, b, sizeof(b)) == 0 &&
                              strcmp(t[1].name, "w.b") == 0, "data round trip");
        mx_tensors_free(t, n);
        free(data);
        unlink(path);
}

int main(void) {
        framing();
        entries();
        layout();
        results();
        writer_roundtrip();
        return test_result();
}
