/* test_log.c - the structured log line (core/log.h): the timestamp parses back (strptime +
 * timegm) to the wall-clock time of the call, the columns and fields are where log.h says,
 * levels filter, MX_LOG_LEVEL overrides the config, and a message with a newline stays one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <regex.h>

#include "core/log.h"

/* Everything the logger wrote to its temporary file so far. */
static char *read_all(FILE *f)
{
    static char buf[16384];
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    return buf;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static FILE *logger_to_file(mx_log *log, const char *level)
{
    mx_error err = {0};
    unsetenv("MX_LOG_LEVEL");
    assert_int_equal(mx_log_init(log, "gateway", level, &err), 0);
    FILE *f = tmpfile();
    assert_non_null(f);
    log->fd = fileno(f);
    return f;
}

static void test_format_and_timestamp(void **state)
{
    (void)state;
    mx_log log;
    FILE *f = logger_to_file(&log, NULL);
    double before = now_s();
    mx_log_field fields[] = {MX_LOG_STR("stage", "127.0.0.1:5000"), MX_LOG_INT("tries", 3),
                             MX_LOG_STR("why", "two words"), MX_LOG_STR("empty", "")};
    mx_log_event(&log, MX_LOG_WARN, "req-00ab", "stage slow", fields, 4);
    double after = now_s();
    char *s = read_all(f);
    /* 2026-12-02T19:20:31.123Z warn gateway req=req-00ab: stage slow stage=... */
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z warn gateway "
                             "req=req-00ab: stage slow stage=127\\.0\\.0\\.1:5000 tries=3 why=\"two words\" "
                             "empty=\"\"\n$",
                             REG_EXTENDED),
                     0);
    int m = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    if (m)
        fail_msg("line does not match: %s", s);
    struct tm tm = {0};
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    assert_non_null(rest);
    assert_int_equal(rest[0], '.');
    double t = (double)timegm(&tm) + atoi(rest + 1) / 1000.0;
    /* milliseconds are truncated: the stamp lies in [before - 1 ms, after] */
    assert_true(t >= before - 0.001 && t <= after + 1e-6);
    fclose(f);
}

static void test_levels_filter(void **state)
{
    (void)state;
    mx_log log;
    FILE *f = logger_to_file(&log, "warn");
    assert_int_equal(log.level, MX_LOG_WARN);
    mx_logf(&log, MX_LOG_DEBUG, NULL, "d %d", 1);
    mx_logf(&log, MX_LOG_INFO, NULL, "i %d", 2);
    mx_logf(&log, MX_LOG_WARN, NULL, "w %d", 3);
    mx_logf(&log, MX_LOG_ERROR, "", "e %d", 4);
    char *s = read_all(f);
    assert_null(strstr(s, ": d 1"));
    assert_null(strstr(s, ": i 2"));
    assert_non_null(strstr(s, " warn gateway: w 3\n"));
    assert_non_null(strstr(s, " error gateway: e 4\n")); /* "" request id: no req= column */
    assert_false(mx_log_enabled(&log, MX_LOG_INFO));
    assert_false(mx_log_enabled(NULL, MX_LOG_ERROR));
    mx_logf(NULL, MX_LOG_ERROR, NULL, "dropped"); /* a NULL logger is a no-op */
    fclose(f);
}

static void test_level_sources(void **state)
{
    (void)state;
    mx_log log;
    mx_error err = {0};
    mx_log_level l;
    assert_int_equal(mx_log_level_parse("DEBUG", &l, &err), 0);
    assert_int_equal(l, MX_LOG_DEBUG);
    assert_int_equal(mx_log_level_parse("warning", &l, &err), 0);
    assert_int_equal(l, MX_LOG_WARN);
    assert_int_equal(mx_log_level_parse("verbose", &l, &err), MX_EINVAL);
    unsetenv("MX_LOG_LEVEL");
    assert_int_equal(mx_log_init(&log, "x", NULL, &err), 0);
    assert_int_equal(log.level, MX_LOG_INFO);
    assert_int_equal(mx_log_init(&log, "x", "loud", &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "log_level"));
    setenv("MX_LOG_LEVEL", "error", 1); /* the environment wins over the config */
    assert_int_equal(mx_log_init(&log, "x", "debug", &err), 0);
    assert_int_equal(log.level, MX_LOG_ERROR);
    setenv("MX_LOG_LEVEL", "nope", 1);
    assert_int_equal(mx_log_init(&log, "x", "debug", &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "MX_LOG_LEVEL"));
    unsetenv("MX_LOG_LEVEL");
}

static void test_one_line_per_event(void **state)
{
    (void)state;
    mx_log log;
    FILE *f = logger_to_file(&log, "debug");
    mx_logf(&log, MX_LOG_INFO, NULL, "first\nsecond \"quoted\"");
    char big[4 * MX_LOG_LINE_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    mx_log_event(&log, MX_LOG_DEBUG, NULL, big, NULL, 0);
    mx_log_access(&log, "Generate", "OK", 12, 64, 812.44, "req-1");
    char *s = read_all(f);
    int lines = 0;
    for (char *p = s; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
    assert_non_null(strstr(s, ": first\\nsecond \"quoted\"\n")); /* a message keeps its quotes */
    char *second = strchr(s, '\n') + 1;
    char *third = strchr(second, '\n') + 1;
    assert_int_equal((int)(third - second), MX_LOG_LINE_MAX); /* cut, newline kept */
    assert_non_null(strstr(third, " info gateway req=req-1: access method=Generate status=OK prompt_tokens=12 "
                                  "generated_tokens=64 latency_ms=812.4\n"));
    fclose(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_and_timestamp),
        cmocka_unit_test(test_levels_filter),
        cmocka_unit_test(test_level_sources),
        cmocka_unit_test(test_one_line_per_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
