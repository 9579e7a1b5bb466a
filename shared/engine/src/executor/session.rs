//! Running the steps: one thread's buffers and the loop over the program.

use std::sync::Arc;

use super::kernels::{self, Aligned, Clamp, Depthwise, PackedB};
use super::plan::block_scratch;
use super::{Executor, Expand, Step, Value, ValueId};

impl Executor {
    /// A per-thread runner with its own buffers.
    pub fn session(self: &Arc<Self>) -> ExecutorSession {
        ExecutorSession {
            executor: Arc::clone(self),
            slots: self.slot_len.iter().map(|&n| Aligned::zeroed(n)).collect(),
            scratch: Aligned::zeroed(self.scratch_len),
        }
    }
}

/// One thread's runner: the executor and its buffers.
pub struct ExecutorSession {
    executor: Arc<Executor>,
    slots: Vec<Aligned>,
    scratch: Aligned,
}

impl ExecutorSession {
    /// Runs one image (`input`: `H * W * C` floats, channels-last) and returns the output.
    pub fn run(&mut self, input: &[f32]) -> Vec<f32> {
        self.run_profiled(input, None)
    }

    /// [`ExecutorSession::run`], adding each step's time to `profile[step]`.
    pub fn run_profiled(
        &mut self,
        input: &[f32],
        mut profile: Option<&mut Vec<std::time::Duration>>,
    ) -> Vec<f32> {
        let ex = &*self.executor;
        assert_eq!(input.len(), ex.input_len(), "input length");
        self.slots[ex.slot_of[ex.input]][..input.len()].copy_from_slice(input);
        if let Some(p) = profile.as_deref_mut() {
            p.resize(ex.steps.len(), std::time::Duration::ZERO);
        }
        for (i, step) in ex.steps.iter().enumerate() {
            let start = profile.is_some().then(std::time::Instant::now);
            let dst_slot = ex.slot_of[step.dst()];
            let mut dst = std::mem::take(&mut self.slots[dst_slot]);
            let len = |v: ValueId| ex.values[v].len();
            let slot = |v: ValueId| -> &[f32] {
                let s = ex.slot_of[v];
                assert_ne!(s, dst_slot, "a step reads the slot it writes");
                &self.slots[s][..len(v)]
            };
            let out = &mut dst[..len(step.dst())];
            match step {
                Step::Pointwise {
                    src,
                    b,
                    clamp,
                    residual,
                    ..
                } => {
                    let x = ex.values[*src];
                    let res = residual.map(slot);
                    kernels::gemm(slot(*src), x.h * x.w, x.c, b, *clamp, res, out);
                }
                Step::Dense {
                    src,
                    geometry,
                    b,
                    clamp,
                    residual,
                    ..
                } => {
                    let patches =
                        &mut self.scratch[..geometry.oh * geometry.ow * geometry.patch_len()];
                    geometry.run(slot(*src), patches);
                    let res = residual.map(slot);
                    kernels::gemm(
                        patches,
                        geometry.oh * geometry.ow,
                        geometry.patch_len(),
                        b,
                        *clamp,
                        res,
                        out,
                    );
                }
                Step::Depthwise { src, op, .. } => op.run(slot(*src), out),
                Step::Block {
                    src,
                    expand,
                    dw,
                    project,
                    clamp,
                    residual,
                    ..
                } => {
                    let [ring_len, row_len, patches_len] = block_scratch(expand, dw);
                    let (ring, rest) = self.scratch.split_at_mut(ring_len);
                    let (dw_row, rest) = rest.split_at_mut(row_len);
                    run_block(
                        slot(*src),
                        ex.values[*src],
                        expand,
                        dw,
                        (project, *clamp),
                        residual.map(slot),
                        (ring, dw_row, &mut rest[..patches_len]),
                        out,
                    );
                }
                Step::Affine {
                    src,
                    mul,
                    add,
                    clamp,
                    ..
                } => {
                    let c = mul.len();
                    for (o, x) in out.chunks_exact_mut(c).zip(slot(*src).chunks_exact(c)) {
                        for j in 0..c {
                            o[j] = (x[j] * mul[j] + add[j]).max(clamp.lo).min(clamp.hi);
                        }
                    }
                }
                Step::Add { a, b, .. } => {
                    for ((o, x), y) in out.iter_mut().zip(slot(*a)).zip(slot(*b)) {
                        *o = x + y;
                    }
                }
                Step::Pool { src, scale, .. } => {
                    let c = out.len();
                    out.fill(0.0);
                    for px in slot(*src).chunks_exact(c) {
                        for (o, x) in out.iter_mut().zip(px) {
                            *o += x;
                        }
                    }
                    for o in out.iter_mut() {
                        *o *= scale;
                    }
                }
            }
            self.slots[dst_slot] = dst;
            if let (Some(p), Some(start)) = (profile.as_deref_mut(), start) {
                p[i] += start.elapsed();
            }
        }
        self.slots[ex.slot_of[ex.output]][..ex.output_len()].to_vec()
    }
}

/// Runs a [`Step::Block`] one output row at a time: the expanded rows the depthwise row needs
/// (each computed once, kept in a ring of `kh` rows: a row is overwritten only once every
/// later output row is past it), the depthwise row, then its projection (+ the residual's
/// row) into `out`. `scratch` is the ring, the depthwise row and a row of patches
/// ([`block_scratch`]).
#[allow(clippy::too_many_arguments)]
fn run_block(
    src: &[f32],
    x: Value,
    expand: &Expand,
    dw: &Depthwise,
    (project, clamp): (&PackedB, Clamp),
    residual: Option<&[f32]>,
    (ring, dw_row, patches): (&mut [f32], &mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let line = dw.w * dw.c;
    let out_row = dw.ow * project.n();
    let mut next = 0;
    for oy in 0..dw.oh {
        let need = dw.input_rows(oy..oy + 1);
        let mut rows: [&[f32]; kernels::MAX_KH] = [&[]; kernels::MAX_KH];
        if let Expand::None = expand {
            for (r, iy) in rows.iter_mut().zip(need.clone()) {
                *r = &src[iy * line..(iy + 1) * line];
            }
        } else {
            while next < need.end {
                let at = (next % dw.kh) * line;
                let ring_row = &mut ring[at..at + line];
                match expand {
                    Expand::Pointwise(b, c) => {
                        let a = &src[next * x.w * x.c..(next + 1) * x.w * x.c];
                        kernels::gemm(a, x.w, x.c, b, *c, None, ring_row);
                    }
                    Expand::Dense(g, b, c) => {
                        kernels::conv_row(g, src, next, b, *c, patches, ring_row);
                    }
                    Expand::None => unreachable!("handled above"),
                }
                next += 1;
            }
            for (r, iy) in rows.iter_mut().zip(need.clone()) {
                *r = &ring[(iy % dw.kh) * line..][..line];
            }
        }
        dw.run_rows(&rows[..need.len()], need.start, oy..oy + 1, dw_row);
        let res = residual.map(|r| &r[oy * out_row..(oy + 1) * out_row]);
        kernels::gemm(
            dw_row,
            dw.ow,
            dw.c,
            project,
            clamp,
            res,
            &mut out[oy * out_row..(oy + 1) * out_row],
        );
    }
}
