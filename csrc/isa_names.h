/* Forced into every kernel source (csrc/ops, csrc/peft, csrc/optim) when it is compiled for
 * one instruction set: -DPC_ISA=avx2 -include isa_names.h. Each kernel then defines and calls
 * NAME_avx2 instead of NAME, so one library holds the kernels of every set side by side;
 * dispatch.c defines the plain names and forwards them to the set picked at start-up.
 *
 * Every external function of a kernel source is listed here. One missing here, or missing
 * from dispatch.h, fails the link (a duplicate or an undefined symbol), so the lists cannot
 * drift apart silently. */
#ifndef PEFTCORE_ISA_NAMES_H
#define PEFTCORE_ISA_NAMES_H

#ifndef PC_ISA
#error "isa_names.h is for kernel sources compiled with -DPC_ISA=<set>"
#endif

#define PC_ISA_PASTE(name, isa) name##_##isa
#define PC_ISA_NAME(name, isa) PC_ISA_PASTE(name, isa)

/* ops/activation.c */
#define pc_gelu_span PC_ISA_NAME(pc_gelu_span, PC_ISA)
#define pc_gelu_forward PC_ISA_NAME(pc_gelu_forward, PC_ISA)
#define pc_gelu_grad_inplace PC_ISA_NAME(pc_gelu_grad_inplace, PC_ISA)
#define pc_gelu_scale_backward PC_ISA_NAME(pc_gelu_scale_backward, PC_ISA)
#define pc_gelu_value_slope_span PC_ISA_NAME(pc_gelu_value_slope_span, PC_ISA)
#define pc_mul_inplace PC_ISA_NAME(pc_mul_inplace, PC_ISA)
#define pc_gelu_backward PC_ISA_NAME(pc_gelu_backward, PC_ISA)
#define pc_tanh_forward PC_ISA_NAME(pc_tanh_forward, PC_ISA)
#define pc_tanh_backward PC_ISA_NAME(pc_tanh_backward, PC_ISA)
#define pc_relu_forward PC_ISA_NAME(pc_relu_forward, PC_ISA)
#define pc_relu_backward PC_ISA_NAME(pc_relu_backward, PC_ISA)
#define pc_softmax_forward PC_ISA_NAME(pc_softmax_forward, PC_ISA)
#define pc_softmax_backward PC_ISA_NAME(pc_softmax_backward, PC_ISA)
#define pc_add_forward PC_ISA_NAME(pc_add_forward, PC_ISA)
#define pc_add_backward PC_ISA_NAME(pc_add_backward, PC_ISA)
/* ops/attention.c */
#define pc_attention_probs PC_ISA_NAME(pc_attention_probs, PC_ISA)
#define pc_attention_forward PC_ISA_NAME(pc_attention_forward, PC_ISA)
#define pc_attention_folded_scratch_floats PC_ISA_NAME(pc_attention_folded_scratch_floats, PC_ISA)
#define pc_attention_first_query_folded PC_ISA_NAME(pc_attention_first_query_folded, PC_ISA)
#define pc_attention_backward PC_ISA_NAME(pc_attention_backward, PC_ISA)
#define pc_attention_backward_into PC_ISA_NAME(pc_attention_backward_into, PC_ISA)
#define pc_attention_folded_backward_scratch_floats \
    PC_ISA_NAME(pc_attention_folded_backward_scratch_floats, PC_ISA)
#define pc_attention_first_query_backward_folded \
    PC_ISA_NAME(pc_attention_first_query_backward_folded, PC_ISA)
/* ops/dropout.c */
#define pc_dropout_forward PC_ISA_NAME(pc_dropout_forward, PC_ISA)
#define pc_dropout_backward PC_ISA_NAME(pc_dropout_backward, PC_ISA)
#define pc_dropout_keep PC_ISA_NAME(pc_dropout_keep, PC_ISA)
#define pc_dropout_backward_inplace PC_ISA_NAME(pc_dropout_backward_inplace, PC_ISA)
#define pc_bias_dropout_residual PC_ISA_NAME(pc_bias_dropout_residual, PC_ISA)
#define pc_sum_dropout_backward PC_ISA_NAME(pc_sum_dropout_backward, PC_ISA)
#define pc_bias_dropout_residual_norm PC_ISA_NAME(pc_bias_dropout_residual_norm, PC_ISA)
/* ops/embedding.c */
#define pc_embedding_forward PC_ISA_NAME(pc_embedding_forward, PC_ISA)
#define pc_embedding_backward PC_ISA_NAME(pc_embedding_backward, PC_ISA)
/* ops/lstm.c */
#define pc_lstm_forward PC_ISA_NAME(pc_lstm_forward, PC_ISA)
#define pc_lstm_backward PC_ISA_NAME(pc_lstm_backward, PC_ISA)
/* ops/gemm_packed.c */
#define pc_gemm_packed_init PC_ISA_NAME(pc_gemm_packed_init, PC_ISA)
#define pc_gemm_packed_mode PC_ISA_NAME(pc_gemm_packed_mode, PC_ISA)
#define pc_gemm_packed_has PC_ISA_NAME(pc_gemm_packed_has, PC_ISA)
#define pc_gemm_packed_split_free PC_ISA_NAME(pc_gemm_packed_split_free, PC_ISA)
#define pc_gemm_packed_use PC_ISA_NAME(pc_gemm_packed_use, PC_ISA)
#define pc_sgemm_packed PC_ISA_NAME(pc_sgemm_packed, PC_ISA)
/* ops/linear.c */
#define pc_linear_forward PC_ISA_NAME(pc_linear_forward, PC_ISA)
#define pc_linear_backward PC_ISA_NAME(pc_linear_backward, PC_ISA)
#define pc_column_sums PC_ISA_NAME(pc_column_sums, PC_ISA)
#define pc_column_dots_scale PC_ISA_NAME(pc_column_dots_scale, PC_ISA)
#define pc_scale_columns PC_ISA_NAME(pc_scale_columns, PC_ISA)
/* ops/gate.c */
#define pc_gate_dot PC_ISA_NAME(pc_gate_dot, PC_ISA)
#define pc_gate_forward PC_ISA_NAME(pc_gate_forward, PC_ISA)
#define pc_gate_backward PC_ISA_NAME(pc_gate_backward, PC_ISA)
/* ops/loss.c */
#define pc_cross_entropy_forward PC_ISA_NAME(pc_cross_entropy_forward, PC_ISA)
#define pc_cross_entropy_backward PC_ISA_NAME(pc_cross_entropy_backward, PC_ISA)
#define pc_cross_entropy_weighted_forward PC_ISA_NAME(pc_cross_entropy_weighted_forward, PC_ISA)
#define pc_cross_entropy_weighted_backward PC_ISA_NAME(pc_cross_entropy_weighted_backward, PC_ISA)
#define pc_bce_with_logits_forward PC_ISA_NAME(pc_bce_with_logits_forward, PC_ISA)
#define pc_bce_with_logits_backward PC_ISA_NAME(pc_bce_with_logits_backward, PC_ISA)
#define pc_mse_forward PC_ISA_NAME(pc_mse_forward, PC_ISA)
#define pc_mse_backward PC_ISA_NAME(pc_mse_backward, PC_ISA)
/* ops/norm.c */
#define pc_layernorm_forward PC_ISA_NAME(pc_layernorm_forward, PC_ISA)
#define pc_layernorm_backward PC_ISA_NAME(pc_layernorm_backward, PC_ISA)
#define pc_layernorm_backward_to PC_ISA_NAME(pc_layernorm_backward_to, PC_ISA)
#define pc_layernorm_forward_sum PC_ISA_NAME(pc_layernorm_forward_sum, PC_ISA)
#define pc_layernorm_backward_junction PC_ISA_NAME(pc_layernorm_backward_junction, PC_ISA)
/* ops/tiles.c (called by other kernels only: no dispatch entry) */
#define pc_tile_gemm PC_ISA_NAME(pc_tile_gemm, PC_ISA)
#define pc_tile_gemm_split PC_ISA_NAME(pc_tile_gemm_split, PC_ISA)
#define pc_sgemm_narrow PC_ISA_NAME(pc_sgemm_narrow, PC_ISA)
/* peft/lora.c */
#define pc_lora_forward PC_ISA_NAME(pc_lora_forward, PC_ISA)
#define pc_lora_backward PC_ISA_NAME(pc_lora_backward, PC_ISA)
/* optim/adamw.c */
#define pc_adamw_step PC_ISA_NAME(pc_adamw_step, PC_ISA)
#define pc_sum_squares PC_ISA_NAME(pc_sum_squares, PC_ISA)
#define pc_scale PC_ISA_NAME(pc_scale, PC_ISA)

#endif
