// Block-quantized weights, Q8_0 and Q4_0 (llama.cpp's formats): the rows of W are cut into
// blocks of 32 weights, each block with one f16 scale d; a Q8_0 block holds 32 int8 quants
// q (weight = q·d), a Q4_0 block 32 4-bit quants q (weight = (q − 8)·d).
//
// Three layouts of the same numbers:
//  * The file (what `shardlm quantize` writes, docs/QUANTIZATION.md): tensor `<name>.weight`
//    is I8 [out, in] (Q8_0: the quants in weight order) or U8 [out, in/2] (Q4_0: byte 16b + j
//    of a row holds element 32b + j of block b in its low nibble and element 32b + j + 16 in
//    its high nibble, ggml's order); tensor `<name>.weight_scale` is F16 [out, in/32].
//  * The kernel's packed row (WeightRowBytes bytes), which the loader builds once: the quants
//    of 512-element chunks (16 blocks), then the row's nb = in/32 f16 scales in block order.
//    In a chunk of m blocks (16, or fewer in the row's last chunk), the quants are 8 "vectors"
//    of 4m bytes: bytes 4j … 4j + 3 of vector v are elements 4v … 4v + 3 of the chunk's block j.
//    Q8_0 stores them as q + 128 (uint8, 32m bytes per chunk), so that the weights are the
//    unsigned side of an integer dot product as in Q4_0 (the 128·Σx it adds is taken off
//    once per block, from the x side). Q4_0 stores vectors 2t and 2t + 1 in one
//    group of 4m bytes, 2t in the low nibbles and 2t + 1 in the high ones, as q (0…15), not
//    q − 8 (16m bytes per chunk). So one 64-byte load of a vector gives a 4-byte piece of each
//    of 16 blocks, and a 32-bit integer dot-product lane (vpdpbusd) sums one block's piece:
//    after the 8 vectors, lane j holds block j's whole integer dot product.
//  * Dequantized f32 (DequantizeRow), for references, tests and embedding lookups.
#ifndef SHARDLM_KERNELS_QUANT_H_
#define SHARDLM_KERNELS_QUANT_H_

#include <cstdint>
#include <string>

#include "base/dtype.h"

namespace shardlm {

inline constexpr int64_t kQuantBlock = 32;   // weights per scale
inline constexpr int64_t kQuantChunk = 512;  // elements per 16-block chunk of a packed row

// Quantizes one row of `in` floats (in % 32 == 0) to the file layout, ggml's rounding:
//  Q8_0: d = max|x| / 127, q = round(x / d) (ties away from zero; d = 0 gives q = 0);
//  Q4_0: m = the x of largest magnitude (the first one on ties), d = m / −8,
//        q = min(15, trunc(x / d + 8.5)).
// `quants` gets in bytes (Q8_0) or in/2 (Q4_0); `scales` in/32 f16 bit patterns (d rounded
// to nearest even). Non-finite x is the caller's to reject.
void QuantizeRow(DType format, const float* x, int64_t in, uint8_t* quants, uint16_t* scales);
// Bytes of a row's file quants: in (Q8_0) or in/2 (Q4_0).
int64_t QuantBytes(DType format, int64_t in);

// File layout → packed row (`dst` gets WeightRowBytes(format, in) bytes).
void PackQuantRow(DType format, const uint8_t* quants, const uint16_t* scales, int64_t in,
                  uint8_t* dst);
// Packed row → the weights it stands for, q·d or (q − 8)·d, each rounded once to f32.
void DequantizeRow(DType format, const uint8_t* packed, int64_t in, float* out);
// The integer quant of element k of a packed row (Q4_0: q − 8) and its block's scale bits.
int QuantAt(DType format, const uint8_t* packed, int64_t in, int64_t k);
uint16_t ScaleAt(const uint8_t* packed, DType format, int64_t in, int64_t block);

}  // namespace shardlm

#endif  // SHARDLM_KERNELS_QUANT_H_
