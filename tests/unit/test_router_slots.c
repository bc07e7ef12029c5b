/* test_router_slots.c - a shard's replica set changing at run time (router/replicas.c): a
 * discovered replica gets no call before a health check says SERVING; Health/Watch news
 * (NOT_SERVING, a broken stream) stops new calls at once; an address gone from DNS drains
 * (never picked again) and is closed only once its calls are done and the grace has passed;
 * an address that comes back is checked again; slot indices keep standing for one address;
 * which addresses are at the stage's own host, and whether a shard has such a replica.
 * Drives the slot functions directly on a router built here; channels are never touched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/clock.h"
#include "router/router_internal.h"

typedef struct fixture {
    mx_router r;
    router_shard sh;
} fixture;

/* Stands for a channel: the slot functions only keep the pointer. */
static mx_rpc_channel *const FAKE = (mx_rpc_channel *)(uintptr_t)0x1000;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->r.cfg.expert_timeout_ms = 200;
    f->r.cfg.eject_ms = 500;
    f->r.cfg.eject_max_ms = 5000;
    f->r.cfg.health_interval_ms = 1000;
    router_shard_init(&f->sh);
    f->sh.replicas = calloc(ROUTER_MAX_REPLICAS, sizeof *f->sh.replicas);
    f->r.shards = &f->sh;
    f->r.n_shards = 1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    free(f->sh.replicas);
    router_shard_destroy(&f->sh);
    free(f);
    return 0;
}

/* Which replicas 20 first copies go to, as a bit mask. */
static uint64_t picked(router_shard *sh)
{
    uint64_t m = 0;
    for (int i = 0; i < 20; i++) {
        int p = router_pick_replica(sh, 0);
        if (p >= 0)
            m |= 1ull << p;
    }
    return m;
}

static void test_pending_until_serving(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.1:50071", FAKE, true, false), 0);
    assert_int_equal(router_pick_replica(sh, 0), -1); /* no call before a health check */
    assert_false(router_has_untried(sh, 0));
    assert_true(router_probe_due(&f->r, sh, 0, mx_now_ms())); /* checked at once */
    router_probe_result(&f->r, sh, 0, true);
    assert_int_equal(router_pick_replica(sh, 0), 0);
    /* a second one taken in through its Watch's first message */
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.2:50071", FAKE, true, false), 1);
    assert_int_equal(picked(sh), 1u);
    router_watch_result(&f->r, sh, 1, ROUTER_WATCH_SERVING);
    assert_int_equal(picked(sh), 3u);
}

static void test_watch_news_stops_calls(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.1:50071", FAKE, false, false), 0);
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.2:50071", FAKE, false, false), 1);
    assert_int_equal(picked(sh), 3u);
    router_watch_result(&f->r, sh, 0, ROUTER_WATCH_NOT_SERVING); /* draining */
    assert_int_equal(picked(sh), 2u);
    router_watch_result(&f->r, sh, 1, ROUTER_WATCH_LOST); /* killed */
    assert_true(sh->replicas[1].ejected);
    assert_int_equal(atomic_load(&f->r.ejections), 2);
    router_watch_result(&f->r, sh, 0, ROUTER_WATCH_SERVING); /* back */
    assert_int_equal(picked(sh), 1u);
}

static void test_gone_from_dns_drains_then_closes(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    for (int i = 0; i < 3; i++) {
        char a[32];
        snprintf(a, sizeof a, "10.0.0.%d:50071", i + 1);
        assert_int_equal(router_slot_add(sh, 0, a, FAKE, true, false), i);
        router_probe_result(&f->r, sh, i, true);
    }
    assert_true(sh->replicas[1].discovered);
    assert_int_equal(picked(sh), 7u);
    /* DNS now says .1 and .3 (and a new .4, which the caller adds) */
    const char addrs[3][ROUTER_ADDR_MAX] = {"10.0.0.3:50071", "10.0.0.1:50071", "10.0.0.4:50071"};
    bool found[3];
    double t0 = mx_now_ms();
    router_slot_sync(sh, 0, addrs, 3, found, t0);
    assert_true(found[0] && found[1] && !found[2]);
    assert_int_equal(atomic_load(&sh->replicas[1].state), ROUTER_SLOT_DRAINING);
    assert_int_equal(picked(sh), 5u);                /* never picked again */
    assert_false(router_has_untried(sh, 1u | 4u));   /* nor counted as a retry target */
    assert_false(router_probe_due(&f->r, sh, 1, t0 + 1e6));
    /* closed only past expert_timeout_ms + the grace, and only with no call left */
    double grace = (double)f->r.cfg.expert_timeout_ms + ROUTER_CLOSE_GRACE_MS;
    atomic_store(&sh->replicas[1].in_flight, 1);
    assert_int_equal(router_slot_reap(&f->r, sh, t0 + grace / 2), -1);
    assert_int_equal(router_slot_reap(&f->r, sh, t0 + grace + 1), -1);
    atomic_store(&sh->replicas[1].in_flight, 0);
    assert_int_equal(router_slot_reap(&f->r, sh, t0 + grace / 2), -1);
    assert_int_equal(router_slot_reap(&f->r, sh, t0 + grace + 1), 1);
    assert_int_equal(atomic_load(&sh->replicas[1].state), ROUTER_SLOT_CLOSING);
    router_slot_release(sh, 1);
    assert_int_equal(atomic_load(&sh->replicas[1].state), ROUTER_SLOT_FREE);
    assert_string_equal(sh->replicas[1].address, "10.0.0.2:50071"); /* kept for messages */
    /* a new address takes a new slot; the old address, back, its old slot */
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.4:50071", FAKE, true, false), 3);
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.2:50071", FAKE, true, false), 1);
    assert_int_equal(sh->n_replicas, 4);
}

static void test_back_before_closed_is_checked_again(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.1:50071", FAKE, true, false), 0);
    router_probe_result(&f->r, sh, 0, true);
    bool found[1];
    router_slot_sync(sh, 0, NULL, 0, found, mx_now_ms()); /* NXDOMAIN: all drain */
    assert_int_equal(router_pick_replica(sh, 0), -1);
    const char addrs[1][ROUTER_ADDR_MAX] = {"10.0.0.1:50071"};
    router_slot_sync(sh, 0, addrs, 1, found, mx_now_ms());
    assert_true(found[0]);
    assert_int_equal(atomic_load(&sh->replicas[0].state), ROUTER_SLOT_PENDING);
    assert_int_equal(router_pick_replica(sh, 0), -1);
    router_probe_result(&f->r, sh, 0, true);
    assert_int_equal(router_pick_replica(sh, 0), 0);
}

static void test_other_entries_and_failures(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    /* a static entry (0) and a DNS entry (1) resolving to the same address: one replica */
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.1:50071", FAKE, false, false), 0);
    const char addrs[1][ROUTER_ADDR_MAX] = {"10.0.0.1:50071"};
    bool found[1];
    router_slot_sync(sh, 1, addrs, 1, found, mx_now_ms());
    assert_true(found[0]);
    /* nor does the DNS entry drain the static one when its answer is empty */
    router_slot_sync(sh, 1, NULL, 0, found, mx_now_ms());
    assert_int_equal(atomic_load(&sh->replicas[0].state), ROUTER_SLOT_ACTIVE);
    /* a failing discovered replica asks for a fresh resolve; a static one does not */
    router_record_fault(&f->r, sh, 0, ROUTER_FAILED);
    assert_false(atomic_load(&sh->resolve_asap));
    assert_int_equal(router_slot_add(sh, 1, "10.0.0.2:50071", FAKE, true, false), 1);
    router_probe_result(&f->r, sh, 1, false);
    assert_true(atomic_load(&sh->resolve_asap));
}

/* Host matching for the send order (dispatch.c): the host part only, brackets of IPv6 off. */
static void test_local_host(void **state)
{
    fixture *f = *state;
    router_shard *sh = &f->sh;
    assert_true(router_address_is_local("127.0.0.2:50071", "127.0.0.2"));
    assert_false(router_address_is_local("127.0.0.20:50071", "127.0.0.2"));
    assert_false(router_address_is_local("127.0.0.2:50071", "127.0.0.20"));
    assert_true(router_address_is_local("[::1]:50071", "::1"));
    assert_true(router_address_is_local("node-a:50071", "node-a"));
    assert_false(router_address_is_local("127.0.0.2:50071", ""));
    assert_false(router_address_is_local("127.0.0.2", "127.0.0.2")); /* no port: not an address */
    char host[8];
    mx_router_host_of("[fe80::1]:5", host, sizeof host);
    assert_string_equal(host, "fe80::1");
    mx_router_host_of("127.0.0.2:5", host, sizeof host); /* 9 characters: does not fit in 8 */
    assert_string_equal(host, "");
    /* only an active local replica counts */
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.1:50071", FAKE, false, false), 0);
    assert_false(router_shard_has_local(sh));
    assert_int_equal(router_slot_add(sh, 0, "10.0.0.2:50071", FAKE, true, true), 1);
    assert_false(router_shard_has_local(sh)); /* pending its first health check */
    router_probe_result(&f->r, sh, 1, true);
    assert_true(router_shard_has_local(sh));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pending_until_serving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_news_stops_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gone_from_dns_drains_then_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_back_before_closed_is_checked_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_entries_and_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_host, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
