// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// PATCH_EXEC portable core: validates an options blob (docs/patch_exec.md, versions 1
// and 2: INPUT_NCHW, STREAM pairs and CACHE_COLS halo caches) and runs a stage patch by
// patch. No TFLM dependency, no heap, no exceptions, no float at run time, C++14 (the API
// is plain C so ctypes can call it). Caches live in the one scratch buffer.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_CORE_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_CORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Result of every core call. Non-zero values are errors; PatchExecValidate also
// writes a message naming the offending field.
typedef enum {
  kPatchExecOk = 0,
  kPatchExecErrTruncated = 1,     // blob shorter than its header or total_bytes
  kPatchExecErrMagic = 2,         // not "TPEX"
  kPatchExecErrVersion = 3,       // version not 1, 2 or 3, or header_bytes != 32
  kPatchExecErrCounts = 4,        // T, L, n, m, num_inputs, header flags, reserved fields
  kPatchExecErrTensor = 5,        // tensor records and sizes, slots, caches, scratch_bytes
  kPatchExecErrRange = 6,         // range table, output tiling
  kPatchExecErrLayer = 7,         // layer records (kind, flags, indices, params, STREAM)
  kPatchExecErrShape = 8,         // rule 6: shapes
  kPatchExecErrHalo = 9,          // rule 7: halo containment (of the computed columns)
  kPatchExecErrSlotOverlap = 10,  // rule 8: live slots overlap; a cache overlaps a slot/cache
  kPatchExecErrConstant = 11,     // a constant input's type/size/value is wrong
  kPatchExecErrArgument = 12,     // a null pointer or bad index passed to the API
} PatchExecStatus;

// Element type a constant operator input must have.
typedef enum {
  kPatchExecConstUnused = 0,  // no layer references this input
  kPatchExecConstInt8 = 1,    // conv weights
  kPatchExecConstInt32 = 2,   // bias, multipliers, shifts
  // Not a constant: a MUL layer's per-channel int8 operand or an ADD layer's addend, an
  // arena tensor the operator reads at run time (its data is only valid in Eval, never
  // read before PatchExecRun).
  kPatchExecConstRuntimeInt8 = 3,
} PatchExecConstType;

// Checks all 10 rules of docs/patch_exec.md in bounded time; never reads outside
// [blob, blob + size). On error writes a NUL-terminated message into `message`
// (if non-null, at most message_size bytes including the NUL).
PatchExecStatus PatchExecValidate(const uint8_t* blob, size_t size, char* message,
                                  size_t message_size);

// The scratch bytes a validated blob needs (its header field). This is the one
// function that gives the scratch size; the Python planner is tested against it.
uint32_t PatchExecScratchBytes(const uint8_t* validated_blob);

// Header fields of a validated blob.
uint32_t PatchExecNumInputs(const uint8_t* validated_blob);
// Size h x w x c of stage tensor 0 (input) or T-1 (output): which = 0 input,
// 1 output. The output (and the input without INPUT_NCHW) is [1, h, w, c].
void PatchExecIoShape(const uint8_t* validated_blob, int which, int32_t* h, int32_t* w, int32_t* c);
// 1 when the blob sets INPUT_NCHW (version 2): input 0 is [1, c, h, w] (a folded
// TRANSPOSE) instead of [1, h, w, c]; else 0.
int PatchExecInputNchw(const uint8_t* validated_blob);
// 1 when the blob sets PACKED (version 3): a conv layer's constants start at element
// offsets of their inputs and several layers may share an input, so an input must hold
// at least PatchExecConstantSpec's count; else 0 (it must hold exactly that count).
int PatchExecConstantsPacked(const uint8_t* validated_blob);
// What operator input `index` (1..num_inputs-1) must be: type and element count (with
// PACKED, the most elements a layer reads up to: offset + count). Unreferenced inputs give
// kPatchExecConstUnused and 0.
PatchExecStatus PatchExecConstantSpec(const uint8_t* validated_blob, uint32_t index,
                                      PatchExecConstType* type, uint32_t* elements);

// Supplies the data of operator input `index` (1..num_inputs-1) at run time.
typedef const void* (*PatchExecInputFn)(void* context, uint32_t index);

// Checks the constants once, in Prepare: every int32 constant at an address that is a
// multiple of 4 (the kernels load int32_t), multipliers in [0, 2^31), shifts in
// [-31, 30]. Message as PatchExecValidate.
PatchExecStatus PatchExecCheckConstants(const uint8_t* validated_blob, PatchExecInputFn get_input,
                                        void* context, char* message, size_t message_size);

// Runs the stage: input int8 [1,H,W,C] of tensor 0 ([1,C,H,W] with INPUT_NCHW), output
// int8 [1,H,W,C] of tensor T-1, scratch of PatchExecScratchBytes() bytes (may be null
// when that is 0). The blob must have passed PatchExecValidate and the constants
// PatchExecCheckConstants; Run validates nothing and allocates nothing.
PatchExecStatus PatchExecRun(const uint8_t* validated_blob, const int8_t* input,
                             PatchExecInputFn get_input, void* context, int8_t* output,
                             int8_t* scratch);

// Convenience for ctypes/tests: inputs[i] is operator input i (inputs[0] unused).
PatchExecStatus PatchExecRunArray(const uint8_t* validated_blob, const int8_t* input,
                                  const void* const* inputs, uint32_t num_inputs, int8_t* output,
                                  int8_t* scratch);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_CORE_H_
