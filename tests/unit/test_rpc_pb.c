/* test_rpc_pb.c - protobuf-c contracts through core/rpc/pb.h: round trips of the public and
 * internal messages (packed little-endian tensors), and fuzzed / truncated bytes that must
 * give MX_EINVAL with the message type named, never a crash (run under ASan by `make asan`). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grpc/health/v1/health.pb-c.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "mx/v1/generation.pb-c.h"
#include "core/rpc/pb.h"

/* A RunExpertsRequest with two groups and a 3x4 f32 tensor. */
static mx_rpc_payload pack_experts(float *values)
{
    Mx__Internal__V1__ExpertGroup g0 = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
    Mx__Internal__V1__ExpertGroup g1 = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
    g0.expert_id = 7, g0.num_rows = 1, g1.expert_id = 31, g1.num_rows = 2;
    Mx__Internal__V1__ExpertGroup *groups[] = {&g0, &g1};
    Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
    t.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32, t.rows = 3, t.cols = 4;
    t.data.data = (uint8_t *)values;
    t.data.len = 12 * sizeof(float);
    Mx__Internal__V1__RunExpertsRequest r = MX__INTERNAL__V1__RUN_EXPERTS_REQUEST__INIT;
    r.layer = 5, r.n_groups = 2, r.groups = groups, r.hidden = &t;
    mx_rpc_payload p;
    assert_int_equal(mx_rpc_pb_pack(&r.base, &p, NULL), 0);
    return p;
}

static void test_expert_request_roundtrip(void **state)
{
    (void)state;
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i * 0.5f - 2.0f;
    mx_rpc_payload p = pack_experts(v);
    ProtobufCMessage *m;
    assert_int_equal(mx_rpc_pb_unpack(&mx__internal__v1__run_experts_request__descriptor, p.data,
                                      p.len, &m, NULL), 0);
    Mx__Internal__V1__RunExpertsRequest *r = (Mx__Internal__V1__RunExpertsRequest *)m;
    assert_int_equal(r->layer, 5);
    assert_int_equal(r->n_groups, 2);
    assert_int_equal(r->groups[1]->expert_id, 31);
    assert_int_equal(r->hidden->data.len, sizeof v);
    assert_memory_equal(r->hidden->data.data, v, sizeof v);   /* little-endian host */
    protobuf_c_message_free_unpacked(m, NULL);
    p.release(p.release_ctx);
}

static void test_truncated_tensor_is_rejected(void **state)
{
    (void)state;
    float v[12] = {0};
    mx_rpc_payload p = pack_experts(v);
    /* The tensor bytes are the tail of the message: cutting into them must fail. */
    mx_error err;
    ProtobufCMessage *m;
    for (size_t cut = p.len - 40; cut < p.len; cut++) {
        assert_int_equal(mx_rpc_pb_unpack(&mx__internal__v1__run_experts_request__descriptor,
                                          p.data, cut, &m, &err), MX_EINVAL);
        assert_non_null(strstr(err.msg, "malformed mx.internal.v1.RunExpertsRequest"));
    }
    p.release(p.release_ctx);
}

/* Random bit flips and truncations of valid messages of every contract: unpack may accept
 * (a flip can give another valid message) but must never crash or leak. */
static void test_fuzzed_bytes_never_crash(void **state)
{
    (void)state;
    const ProtobufCMessageDescriptor *descs[] = {
        &mx__v1__generate_request__descriptor, &mx__internal__v1__run_batch_request__descriptor,
        &mx__internal__v1__run_experts_request__descriptor,
        &grpc__health__v1__health_check_request__descriptor,
    };
    uint32_t ids[] = {1, 2, 300000};
    Mx__V1__SamplingParams sp = MX__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = 0.5f;
    Mx__V1__GenerateRequest g = MX__V1__GENERATE_REQUEST__INIT;
    g.n_prompt_ids = 3, g.prompt_ids = ids, g.prompt = "text", g.sampling = &sp;
    mx_rpc_payload gp;
    assert_int_equal(mx_rpc_pb_pack(&g.base, &gp, NULL), 0);
    float v[12] = {1};
    mx_rpc_payload ep = pack_experts(v);

    srand(12345);
    int rejected = 0;
    for (int iter = 0; iter < 4000; iter++) {
        const mx_rpc_payload *src = iter % 2 ? &ep : &gp;
        uint8_t buf[256];
        size_t len = src->len;
        memcpy(buf, src->data, len);
        int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++)
            buf[rand() % len] ^= (uint8_t)(1u << (rand() % 8));
        if (rand() % 3 == 0)
            len = (size_t)rand() % len;
        ProtobufCMessage *m;
        int rc = mx_rpc_pb_unpack(descs[iter % 4], buf, len, &m, NULL);
        if (rc == 0)
            protobuf_c_message_free_unpacked(m, NULL);
        else
            rejected++;
    }
    assert_true(rejected > 100);   /* the fuzzing did produce invalid input */
    gp.release(gp.release_ctx);
    ep.release(ep.release_ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expert_request_roundtrip),
        cmocka_unit_test(test_truncated_tensor_is_rejected),
        cmocka_unit_test(test_fuzzed_bytes_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
