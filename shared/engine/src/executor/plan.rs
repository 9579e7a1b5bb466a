//! The buffer plan: a slot per value, reused once its readers have run, and the scratch the
//! steps need.

use super::kernels::Depthwise;
use super::{Expand, Step, Value, ValueId};

/// Floats of a [`Step::Block`]'s scratch: the ring of `kh` expanded rows (none without an
/// expansion), one depthwise output row, and one row of im2col patches (a dense expansion).
pub(super) fn block_scratch(expand: &Expand, dw: &Depthwise) -> [usize; 3] {
    let ring = match expand {
        Expand::None => 0,
        _ => dw.kh * dw.w * dw.c,
    };
    let patches = match expand {
        Expand::Dense(g, ..) => g.ow * g.patch_len(),
        _ => 0,
    };
    [ring, dw.ow * dw.c, patches]
}

/// Assigns each value a buffer slot: a slot is reused once every reader of its value has run
/// (a step never writes into a slot it reads).
pub(super) fn plan_slots(
    steps: &[Step],
    values: &[Value],
    input: ValueId,
    output: ValueId,
) -> (Vec<usize>, Vec<usize>) {
    let mut last_use = vec![0usize; values.len()];
    for (i, s) in steps.iter().enumerate() {
        last_use[s.dst()] = last_use[s.dst()].max(i);
        for r in s.reads() {
            last_use[r] = last_use[r].max(i);
        }
    }
    last_use[output] = usize::MAX;
    let mut slot_of = vec![usize::MAX; values.len()];
    let mut slot_len: Vec<usize> = vec![values[input].len()];
    slot_of[input] = 0;
    let mut live: Vec<ValueId> = vec![input];
    let mut free: Vec<usize> = vec![];
    for (i, s) in steps.iter().enumerate() {
        live.retain(|&v| {
            if last_use[v] < i {
                free.push(slot_of[v]);
                false
            } else {
                true
            }
        });
        let dst = s.dst();
        if slot_of[dst] != usize::MAX {
            continue;
        }
        let need = values[dst].len();
        // The smallest free slot that fits, else the largest (grown), else a new one.
        let pick = free
            .iter()
            .enumerate()
            .filter(|(_, &sl)| slot_len[sl] >= need)
            .min_by_key(|(_, &sl)| slot_len[sl])
            .or_else(|| free.iter().enumerate().max_by_key(|(_, &sl)| slot_len[sl]))
            .map(|(at, _)| at);
        let slot = match pick {
            Some(at) => free.swap_remove(at),
            None => {
                slot_len.push(0);
                slot_len.len() - 1
            }
        };
        slot_len[slot] = slot_len[slot].max(need);
        slot_of[dst] = slot;
        live.push(dst);
    }
    (slot_of, slot_len)
}

/// Floats of the largest scratch a step needs: a dense step's im2col patches, a block's
/// [`block_scratch`].
pub(super) fn scratch_len(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match s {
            Step::Dense { geometry, .. } => geometry.oh * geometry.ow * geometry.patch_len(),
            Step::Block { expand, dw, .. } => block_scratch(expand, dw).iter().sum(),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}
