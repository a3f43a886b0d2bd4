/* Runtime dispatch: the kernels of csrc/ops, csrc/peft and csrc/optim are compiled once per
 * instruction set (x86-64: baseline SSE2, AVX2 + FMA, AVX-512; elsewhere the portable C
 * build alone), each set's copy under its own suffix (isa_names.h). At start-up
 * pc_isa_select picks the best set this CPU runs, or the one PEFTCORE_ISA names, and the
 * plain-named functions below forward to it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define PC_X86_SETS 1
#endif

typedef struct {
#define FIELD(kind, ret, name, params, args) ret(*name) params;
    PC_DISPATCHED_KERNELS(FIELD)
#undef FIELD
} kernel_table;

#define DECLARE(kind, ret, name, params, args) ret name##_baseline params;
PC_DISPATCHED_KERNELS(DECLARE)
#undef DECLARE
#define ENTRY_BASELINE(kind, ret, name, params, args) .name = name##_baseline,
#ifdef PC_X86_SETS
#define DECLARE(kind, ret, name, params, args) ret name##_avx2 params; ret name##_avx512 params;
PC_DISPATCHED_KERNELS(DECLARE)
#undef DECLARE
#define ENTRY_AVX2(kind, ret, name, params, args) .name = name##_avx2,
#define ENTRY_AVX512(kind, ret, name, params, args) .name = name##_avx512,
#endif

static const kernel_table tables[PC_ISA_COUNT] = {
    [PC_ISA_BASELINE] = {PC_DISPATCHED_KERNELS(ENTRY_BASELINE)},
#ifdef PC_X86_SETS
    [PC_ISA_AVX2] = {PC_DISPATCHED_KERNELS(ENTRY_AVX2)},
    [PC_ISA_AVX512] = {PC_DISPATCHED_KERNELS(ENTRY_AVX512)},
#endif
};

static const char *const isa_names[PC_ISA_COUNT] = {"baseline", "avx2", "avx512"};

/* the CPU features each set is compiled for (setup.py / Makefile flags) */
#ifdef PC_X86_SETS
static const char *const isa_features[PC_ISA_COUNT][6] = {
    [PC_ISA_BASELINE] = {NULL},
    [PC_ISA_AVX2] = {"avx", "avx2", "fma", NULL},
    [PC_ISA_AVX512] = {"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"},
};

#endif

static pc_isa active_isa = PC_ISA_BASELINE;
static const kernel_table *active = &tables[PC_ISA_BASELINE];
static char isa_note[512];
static char available_names[64];

bool pc_isa_runs(pc_isa isa) {
    if (isa == PC_ISA_BASELINE) return true;
#ifdef PC_X86_SETS
    if (isa < 0 || isa >= PC_ISA_COUNT) return false;
    for (int i = 0; i < 6 && isa_features[isa][i]; i++)
        if (!pc_cpu_has(isa_features[isa][i])) return false;
    return true;
#else
    return false;
#endif
}

/* "avx512f avx512bw" etc.: what set isa needs that this CPU lacks */
static void missing_features(pc_isa isa, char *out, size_t size) {
    out[0] = '\0';
#ifdef PC_X86_SETS
    for (int i = 0; i < 6 && isa_features[isa][i]; i++)
        if (!pc_cpu_has(isa_features[isa][i])) {
            if (out[0]) strncat(out, " ", size - strlen(out) - 1);
            strncat(out, isa_features[isa][i], size - strlen(out) - 1);
        }
#endif
}

pc_isa pc_isa_select(void) {
    pc_isa best = PC_ISA_BASELINE;
    available_names[0] = '\0';
    for (int i = 0; i < PC_ISA_COUNT; i++) {
#ifndef PC_X86_SETS
        if (i != PC_ISA_BASELINE) continue;
#endif
        if (!pc_isa_runs((pc_isa)i)) continue;
        best = (pc_isa)i;
        if (available_names[0]) strcat(available_names, " ");
        strcat(available_names, isa_names[i]);
    }
    pc_isa chosen = best;
    isa_note[0] = '\0';
    const char *want = getenv("PEFTCORE_ISA");
    if (want && want[0]) {
        int named = -1;
        for (int i = 0; i < PC_ISA_COUNT; i++)
            if (strcmp(want, isa_names[i]) == 0) named = i;
        if (named < 0) {
            snprintf(isa_note, sizeof isa_note,
                     "PEFTCORE_ISA=%.64s ignored: expected one of baseline, avx2, avx512; "
                     "using %s",
                     want, isa_names[best]);
        } else if (!pc_isa_runs((pc_isa)named)) {
            char missing[128];
            missing_features((pc_isa)named, missing, sizeof missing);
            snprintf(isa_note, sizeof isa_note,
                     "PEFTCORE_ISA=%s ignored: %s%s; using %s (CPU features: %s)", want,
                     missing[0] ? "this CPU lacks " : "this build has only the portable kernels",
                     missing, isa_names[best], pc_cpu_simd());
        } else {
            chosen = (pc_isa)named;
        }
    }
    active_isa = chosen;
    active = &tables[chosen];
    return chosen;
}

pc_isa pc_isa_active(void) { return active_isa; }
const char *pc_isa_name(pc_isa isa) {
    return isa >= 0 && isa < PC_ISA_COUNT ? isa_names[isa] : "unknown";
}
const char *pc_isa_available(void) { return available_names; }
const char *pc_isa_note(void) { return isa_note; }

/* the plain-named entry points */
#define CALL_VOID(call) call;
#define CALL_VALUE(call) return call;
#define FORWARD(kind, ret, name, params, args) \
    ret name params { CALL_##kind(active->name args) }
PC_DISPATCHED_KERNELS(FORWARD)
#undef FORWARD
