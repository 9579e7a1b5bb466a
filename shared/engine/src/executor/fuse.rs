//! Block fusion: an inverted-residual block whose expanded tensor is large becomes one
//! [`Step::Block`], run one output row at a time.

use super::{Expand, Step, Value, ValueId};

/// The smallest expanded tensor (bytes) whose block [`fuse_blocks`] fuses: below it the
/// tensor stays in L2 between the steps anyway, and whole-tensor GEMMs use the cores better
/// than row-sized ones.
pub(super) const FUSE_MIN_BYTES: usize = 1 << 20;

/// Replaces each inverted-residual block, `[pointwise (expansion)] -> depthwise -> pointwise
/// (projection)` whose intermediate tensors have no other reader, by one [`Step::Block`],
/// when the tensor the depthwise convolution reads is at least `min_bytes`.
pub(super) fn fuse_blocks(
    steps: Vec<Step>,
    values: &[Value],
    output: ValueId,
    min_bytes: usize,
) -> Vec<Step> {
    let mut readers = vec![0usize; values.len()];
    for s in &steps {
        for r in s.reads() {
            readers[r] += 1;
        }
    }
    readers[output] += 1;
    let internal = |v: ValueId| readers[v] == 1 && values[v].len() * 4 >= min_bytes;
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(steps.len());
    let mut i = 0;
    while i < steps.len() {
        let at = |j: usize| steps.get(j).and_then(Option::as_ref);
        // (steps taken, with an expansion)
        let shape = match (at(i), at(i + 1), at(i + 2)) {
            (
                Some(
                    Step::Pointwise {
                        dst: e,
                        residual: None,
                        ..
                    }
                    | Step::Dense {
                        dst: e,
                        residual: None,
                        ..
                    },
                ),
                Some(Step::Depthwise { src, dst: d, .. }),
                Some(Step::Pointwise { src: p, .. }),
            ) if src == e && p == d && internal(*e) && readers[*d] == 1 => Some((3, true)),
            (
                Some(Step::Depthwise { src, dst: d, .. }),
                Some(Step::Pointwise { src: p, .. }),
                _,
            ) if p == d && readers[*d] == 1 && values[*src].len() * 4 >= min_bytes => {
                Some((2, false))
            }
            _ => None,
        };
        let Some((taken, with_expand)) = shape else {
            out.push(steps[i].take().expect("each step once"));
            i += 1;
            continue;
        };
        let mut take = |j: usize| steps[i + j].take().expect("each step once");
        let (src, expand, first) = if with_expand {
            match take(0) {
                Step::Pointwise { src, b, clamp, .. } => {
                    (Some(src), Expand::Pointwise(b, clamp), 1)
                }
                Step::Dense {
                    src,
                    geometry,
                    b,
                    clamp,
                    ..
                } => (Some(src), Expand::Dense(geometry, b, clamp), 1),
                _ => unreachable!("matched above"),
            }
        } else {
            (None, Expand::None, 0)
        };
        let Step::Depthwise {
            src: dw_src,
            op: dw,
            ..
        } = take(first)
        else {
            unreachable!()
        };
        let Step::Pointwise {
            dst,
            b: project,
            clamp,
            residual,
            ..
        } = take(first + 1)
        else {
            unreachable!()
        };
        out.push(Step::Block {
            src: src.unwrap_or(dw_src),
            dst,
            expand,
            dw,
            project,
            clamp,
            residual,
        });
        i += taken;
    }
    out
}
