/* test_loader_safetensors.c - safetensors writer/reader round trip, the on-disk layout the
 * format defines (8-byte length, space-padded header, __metadata__ first), and corrupt files
 * made here byte by byte: each must fail with its own message naming the file and tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/safetensors.h"
#include "loader_testutil.h"

static char *tmp;

static int setup(void **state)
{
    (void)state;
    tmp = make_temp_dir();
    return tmp ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_tree(tmp);
    free(tmp);
    return 0;
}

static void round_trip(void **state)
{
    (void)state;
    float a[6] = {1, -2, 3.5f, 4, 5, 6};
    uint16_t b[5] = {0x3f80, 0x4000, 0xbf80, 0, 0x7f80};
    int32_t c[3] = {7, -8, 9};
    mx_st_write_item items[3] = {
        {.name = "a.weight", .dtype = MX_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b", .dtype = MX_DTYPE_BF16, .ndim = 1, .shape = {5}, .data = b},
        {.name = "c", .dtype = MX_DTYPE_I32, .ndim = 1, .shape = {3}, .data = c},
    };
    char *path = path_join(tmp, "rt.safetensors");
    mx_error err = {0};
    assert_int_equal(mx_st_write(path, items, 3, &err), 0);

    /* Layout per the format: LE length, header a multiple of 8 padded with spaces, metadata first. */
    size_t len = 0;
    unsigned char *raw = (unsigned char *)read_all(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + sizeof a + sizeof b + sizeof c);
    assert_memory_equal(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    assert_memory_equal(raw + 8 + hlen, a, sizeof a); /* data in item order */
    assert_memory_equal(raw + 8 + hlen + sizeof a, b, sizeof b);
    free(raw);

    mx_st_file *f;
    assert_int_equal(mx_st_open(path, &f, &err), 0);
    assert_int_equal(mx_st_count(f), 3);
    assert_string_equal(mx_st_path(f), path);
    assert_null(mx_st_find(f, "__metadata__"));
    assert_null(mx_st_find(f, "missing"));
    const mx_st_entry *e = mx_st_find(f, "a.weight");
    assert_non_null(e);
    assert_int_equal(e->dtype, MX_DTYPE_F32);
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 2);
    assert_int_equal(e->shape[1], 3);
    mx_tensor t;
    assert_int_equal(mx_st_map(f, e, &t, &err), 0);
    assert_int_equal(t.device, MX_DEVICE_CPU);
    assert_memory_equal(t.data, a, sizeof a);
    /* b starts 24 bytes into the data section: not page aligned. */
    assert_int_equal(mx_st_map(f, mx_st_find(f, "b"), &t, &err), 0);
    assert_int_equal(t.dtype, MX_DTYPE_BF16);
    assert_true(mx_load_as_f32(t.data, t.dtype, 2) == -1.0f);
    assert_int_equal(mx_st_map(f, mx_st_find(f, "c"), &t, &err), 0);
    assert_memory_equal(t.data, c, sizeof c);
    mx_st_close(f);
    free(path);
}

/* Writes 8-byte length + header + data_len zero bytes; hlen_override replaces the length field. */
static char *make_file(const char *name, const char *header, size_t data_len, uint64_t hlen_override)
{
    size_t hl = strlen(header), len = 8 + hl + data_len;
    unsigned char *buf = calloc(1, len);
    uint64_t v = hlen_override ? hlen_override : hl;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(v >> (8 * i));
    memcpy(buf + 8, header, hl);
    char *path = path_join(tmp, name);
    write_bytes(path, buf, len);
    free(buf);
    return path;
}

static void expect_open_error(const char *path, int code, const char *needle, const char *tensor)
{
    mx_st_file *f = (mx_st_file *)0x1;
    mx_error err = {0};
    int rc = mx_st_open(path, &f, &err);
    if (rc != code || !strstr(err.msg, needle) || !strstr(err.msg, path) ||
        (tensor && !strstr(err.msg, tensor)))
        fail_msg("%s: got %d \"%s\", want %d with \"%s\"", path, rc, err.msg, code, needle);
    assert_null(f);
}

static void corrupt_files(void **state)
{
    (void)state;
    char *p;
    p = path_join(tmp, "short.safetensors");
    write_bytes(p, "\x10\0\0\0", 4);
    expect_open_error(p, MX_EFORMAT, "shorter than the 8-byte header length", NULL);
    free(p);

    p = make_file("absurd.safetensors", "{}", 0, 200ull << 20);
    expect_open_error(p, MX_EFORMAT, "is absurd", NULL);
    free(p);

    p = make_file("beyond.safetensors", "{}      ", 0, 1000);
    expect_open_error(p, MX_EFORMAT, "runs past the end of the file", NULL);
    free(p);

    p = make_file("badjson.safetensors", "{\"x\": {\"dtype\": ", 0, 0);
    expect_open_error(p, MX_EFORMAT, "not valid JSON", NULL);
    free(p);

    p = make_file("array.safetensors", "[1, 2]  ", 0, 0);
    expect_open_error(p, MX_EFORMAT, "not a JSON object", NULL);
    free(p);

    p = make_file("overlap.safetensors",
                  "{\"t1\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                  "\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, 0);
    expect_open_error(p, MX_EFORMAT, "overlap tensor", "t2");
    free(p);

    p = make_file("pastend.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, 0);
    expect_open_error(p, MX_EFORMAT, "run past the data section", "tensor w");
    free(p);

    p = make_file("size.safetensors",
                  "{\"w\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, 0);
    expect_open_error(p, MX_EFORMAT, "does not match dtype BF16", "tensor w");
    free(p);

    p = make_file("dtype.safetensors",
                  "{\"w\":{\"dtype\":\"Q7\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "unknown dtype Q7", "tensor w");
    free(p);

    p = make_file("noshape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "lacks 'shape'", "tensor w");
    free(p);

    p = make_file("negshape.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "not a non-negative integer", "tensor w");
    free(p);

    p = make_file("floatshape.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "not a non-negative integer", "tensor w");
    free(p);

    p = make_file("backwards.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "before begin", "tensor w");
    free(p);

    p = make_file("dup.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0);
    expect_open_error(p, MX_EFORMAT, "not valid JSON", NULL);
    free(p);

    p = make_file("notobj.safetensors", "{\"w\": 5}", 0, 0);
    expect_open_error(p, MX_EFORMAT, "not an object", "tensor w");
    free(p);

    p = path_join(tmp, "does-not-exist.safetensors");
    expect_open_error(p, MX_ENOTFOUND, "cannot open", NULL);
    free(p);
}

/* Cutting a valid file anywhere must give an error, never a crash or a bogus success. */
static void every_truncation_fails(void **state)
{
    (void)state;
    float a[4] = {1, 2, 3, 4};
    mx_st_write_item it = {.name = "a", .dtype = MX_DTYPE_F32, .ndim = 1, .shape = {4}, .data = a};
    char *path = path_join(tmp, "full.safetensors"), *cut = path_join(tmp, "cut.safetensors");
    mx_error err = {0};
    assert_int_equal(mx_st_write(path, &it, 1, &err), 0);
    size_t len = 0;
    char *raw = read_all(path, &len);
    for (size_t n = 0; n < len; n++) {
        write_bytes(cut, raw, n);
        mx_st_file *f;
        int rc = mx_st_open(cut, &f, &err);
        if (rc != MX_EFORMAT)
            fail_msg("truncated to %zu of %zu bytes: rc %d (%s)", n, len, rc, err.msg);
    }
    free(raw);
    free(path);
    free(cut);
}

/* The streaming writer produces the same file as the buffer writer. */
static int fill_counting(void *ctx, int item, size_t off, void *buf, size_t len, mx_error *err)
{
    (void)ctx;
    (void)err;
    for (size_t i = 0; i < len; i++)
        ((unsigned char *)buf)[i] = (unsigned char)(off + i + (size_t)item);
    return 0;
}

static void streaming_writer(void **state)
{
    (void)state;
    enum { N = 3 << 20 }; /* bigger than one 8 MiB chunk once x4 */
    unsigned char *data = malloc((size_t)N * 4);
    for (size_t i = 0; i < (size_t)N * 4; i++)
        data[i] = (unsigned char)i;
    mx_st_write_item it = {.name = "big", .dtype = MX_DTYPE_F32, .ndim = 1, .shape = {N}, .data = data};
    char *p1 = path_join(tmp, "buf.safetensors"), *p2 = path_join(tmp, "stream.safetensors");
    mx_error err = {0};
    assert_int_equal(mx_st_write(p1, &it, 1, &err), 0);
    mx_st_write_item it2 = it;
    it2.data = NULL;
    assert_int_equal(mx_st_write_stream(p2, &it2, 1, fill_counting, NULL, &err), 0);
    size_t l1 = 0, l2 = 0;
    char *r1 = read_all(p1, &l1), *r2 = read_all(p2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(r1, r2, l1);
    free(r1);
    free(r2);
    free(data);
    free(p1);
    free(p2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(corrupt_files),
        cmocka_unit_test(every_truncation_fails),
        cmocka_unit_test(streaming_writer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
