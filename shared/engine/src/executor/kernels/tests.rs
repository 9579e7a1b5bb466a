//! The kernels against plain references, and every ISA against the others.

use super::gemm::KC_BYTES;
use super::*;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// Plain triple loop, in f64.
#[allow(clippy::too_many_arguments)]
fn gemm_reference(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    bias: &[f32],
    clamp: Clamp,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * w[p * n + j] as f64)
                .sum();
            let mut v = (s as f32 + bias[j]).max(clamp.lo).min(clamp.hi);
            if let Some(r) = residual {
                v += r[i * n + j];
            }
            c[i * n + j] = v;
        }
    }
    c
}

#[test]
fn aligned_buffers_start_a_cache_line_and_keep_their_values() {
    for len in [0, 1, 15, 16, 17, 1000, 112 * 112 * 32] {
        let z = Aligned::zeroed(len);
        assert_eq!(z.len(), len);
        assert_eq!(z.as_ptr() as usize % 64, 0, "zeroed({len})");
        assert!(z.iter().all(|&v| v == 0.0));
        let values = random(len, len as u64);
        let a = Aligned::from(values.clone());
        assert_eq!(&a[..], &values[..]);
        assert_eq!(a.as_ptr() as usize % 64, 0, "from({len})");
        // A clone and a moved buffer stay aligned (a cloned Vec would not).
        let b = a.clone();
        assert_eq!(&b[..], &values[..]);
        assert_eq!(b.as_ptr() as usize % 64, 0, "clone({len})");
        // A Vec on purpose: the buffer moves into another heap block.
        #[allow(clippy::useless_vec)]
        let moved = vec![a];
        assert_eq!(moved[0].as_ptr() as usize % 64, 0, "moved({len})");
    }
}

#[test]
fn gemm_matches_the_reference_on_every_isa_and_edge() {
    // Every pointwise convolution of MobileNetV2 1.0/224 as (pixels, in, out), the stem
    // as im2col patches, then ragged edges: rows past a whole tile, last panels of at
    // most half a tile (the narrow kernel) or more, one row, one column.
    let mut shapes = vec![
        (12544, 32, 16),
        (12544, 16, 96),
        (3136, 96, 24),
        (3136, 24, 144),
        (3136, 144, 24),
        (784, 144, 32),
        (784, 32, 192),
        (784, 192, 32),
        (196, 192, 64),
        (196, 64, 384),
        (196, 384, 64),
        (196, 384, 96),
        (196, 96, 576),
        (196, 576, 96),
        (49, 576, 160),
        (49, 160, 960),
        (49, 960, 160),
        (49, 960, 320),
        (49, 320, 1280),
        (12544, 27, 32),
    ];
    shapes.extend([
        (13, 27, 32),
        (8, 16, 24),
        (1, 5, 1),
        (29, 144, 33),
        (25, 7, 9),
        (14, 3, 40),
    ]);
    // Deep reductions cut into slices (uneven, with ragged rows and columns), and none.
    shapes.extend([(29, 1000, 33), (10, 513, 17), (3, 2049, 5), (4, 0, 5)]);
    for isa in Isa::all_available() {
        for (s, &(m, k, n)) in shapes.iter().enumerate() {
            let a = random(m * k, s as u64);
            let w = random(k * n, 100 + s as u64);
            let bias = random(n, 200 + s as u64);
            let res = random(m * n, 300 + s as u64);
            let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &bias);
            for (clamp, residual) in [
                (Clamp::NONE, None),
                (Clamp { lo: 0.0, hi: 0.5 }, Some(&res[..])),
            ] {
                let expected = gemm_reference(&a, m, k, n, &w, &bias, clamp, residual);
                let mut c = vec![f32::NAN; m * n];
                gemm(&a, m, k, &packed, clamp, residual, &mut c);
                for (i, (x, y)) in c.iter().zip(&expected).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{isa:?} {m}x{k}x{n} at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

#[test]
fn slicing_the_reduction_changes_no_bit() {
    // Each slice starts from the f32 sums the previous one stored: one pass and any
    // slicing add the same values in the same order.
    for isa in Isa::all_available() {
        for (s, &(m, k, n)) in [(49, 960, 160), (29, 1000, 33), (10, 513, 17)]
            .iter()
            .enumerate()
        {
            let a = random(m * k, 400 + s as u64);
            let w = random(k * n, 500 + s as u64);
            let bias = random(n, 600 + s as u64);
            let res = random(m * n, 700 + s as u64);
            let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &bias);
            let clamp = Clamp { lo: -0.5, hi: 0.5 };
            let mut whole = vec![f32::NAN; m * n];
            let one_pass = packed.clone().with_slices_of(usize::MAX);
            assert_eq!(one_pass.kc, k);
            gemm(&a, m, k, &one_pass, clamp, Some(&res), &mut whole);
            for kc_bytes in [4096, 16 * 1024, KC_BYTES] {
                let sliced_b = packed.clone().with_slices_of(kc_bytes);
                assert!(sliced_b.kc < k, "{kc_bytes}");
                let mut sliced = vec![f32::NAN; m * n];
                gemm(&a, m, k, &sliced_b, clamp, Some(&res), &mut sliced);
                assert!(
                    whole
                        .iter()
                        .zip(&sliced)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{isa:?} {m}x{k}x{n}, slices of {kc_bytes} bytes"
                );
            }
        }
    }
}

#[test]
fn gemm_leaves_columns_past_n_alone_with_a_strided_a() {
    for isa in Isa::all_available() {
        let (m, k, n, lda) = (9, 7, 20, 11);
        let a = random((m - 1) * lda + k, 1);
        let w = random(k * n, 2);
        let packed = PackedB::new(isa, k, n, |p, j| w[p * n + j], &vec![0.0; n]);
        let mut c = vec![7.0; m * n + 5];
        gemm(&a, m, lda, &packed, Clamp::NONE, None, &mut c);
        assert!(c[m * n..].iter().all(|&v| v == 7.0), "{isa:?} wrote past C");
        let compact: Vec<f32> = (0..m)
            .flat_map(|i| a[i * lda..i * lda + k].to_vec())
            .collect();
        let expected = gemm_reference(&compact, m, k, n, &w, &vec![0.0; n], Clamp::NONE, None);
        for (x, y) in c.iter().zip(&expected) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{isa:?}");
        }
    }
}

/// Direct depthwise convolution in f64 (pad after: whatever the output size needs).
fn depthwise_reference(d: &Depthwise, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; d.oh * d.ow * d.c];
    for oy in 0..d.oh {
        for ox in 0..d.ow {
            for ch in 0..d.c {
                let mut s = d.bias[ch] as f64;
                for ky in 0..d.kh {
                    for kx in 0..d.kw {
                        let iy = (oy * d.stride.0 + ky) as isize - d.pad.0 as isize;
                        let ix = (ox * d.stride.1 + kx) as isize - d.pad.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w {
                            let at = (iy as usize * d.w + ix as usize) * d.c + ch;
                            s += x[at] as f64 * d.weights[(ky * d.kw + kx) * d.c + ch] as f64;
                        }
                    }
                }
                out[(oy * d.ow + ox) * d.c + ch] = (s as f32).max(d.clamp.lo).min(d.clamp.hi);
            }
        }
    }
    out
}

#[test]
fn depthwise_matches_the_reference_on_every_isa_and_mobilenet_shape() {
    // (h, w, c, kernel, stride, pad before, pad after): every depthwise layer of MobileNetV2 1.0/224
    // (TF "SAME": nothing before at stride 2), then ragged channels (masked tails of
    // both vector widths), rows narrower than a block, stride 3, a 5x5 kernel and
    // symmetric padding at stride 2.
    let shapes = [
        (112, 112, 32, 3, 1, 1, 1),
        (112, 112, 96, 3, 2, 0, 1),
        (56, 56, 144, 3, 1, 1, 1),
        (56, 56, 144, 3, 2, 0, 1),
        (28, 28, 192, 3, 1, 1, 1),
        (28, 28, 192, 3, 2, 0, 1),
        (14, 14, 384, 3, 1, 1, 1),
        (14, 14, 576, 3, 1, 1, 1),
        (14, 14, 576, 3, 2, 0, 1),
        (7, 7, 960, 3, 1, 1, 1),
        (9, 13, 20, 3, 1, 1, 1),
        (10, 11, 27, 3, 2, 1, 1),
        (3, 2, 3, 3, 1, 1, 1),
        (5, 17, 12, 3, 2, 0, 0),
        (11, 12, 40, 3, 3, 1, 0),
        (8, 9, 24, 5, 1, 2, 2),
    ];
    for (s, &(h, w, c, k, stride, pad, after)) in shapes.iter().enumerate() {
        let out = |n: usize| (n + pad + after - k) / stride + 1;
        let (oh, ow) = (out(h), out(w));
        let base = Depthwise {
            isa: Isa::Portable,
            h,
            w,
            c,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            oh,
            ow,
            weights: random(k * k * c, 6 + s as u64).into(),
            bias: random(c, 7 + s as u64).into(),
            clamp: Clamp { lo: -0.5, hi: 1.0 },
        };
        let x = random(h * w * c, 5 + s as u64);
        let expected = depthwise_reference(&base, &x);
        for isa in Isa::all_available() {
            let d = Depthwise {
                isa,
                ..base.clone()
            };
            // A sentinel past the output: nothing may be written there.
            let mut got = vec![f32::NAN; oh * ow * c + 17];
            d.run(&x, &mut got);
            assert!(
                got[oh * ow * c..].iter().all(|v| v.is_nan()),
                "{isa:?} wrote past the output"
            );
            for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{isa:?} {h}x{w}x{c} k{k} s{stride} at {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn conv_row_matches_the_patches_gemm_bit_for_bit() {
    // The stem (224x224x3, 3x3 stride 2, TF padding: nothing before, one after), padding
    // on both sides at stride 1, a 5x5 kernel, and more channels and outputs than a panel.
    let shapes = [
        (224, 224, 3, 3, 2, 0, 1, 32),
        (9, 23, 3, 3, 1, 1, 1, 16),
        (12, 30, 4, 5, 1, 2, 2, 24),
        (11, 40, 8, 3, 2, 1, 1, 40),
    ];
    for (s, &(h, w, c, k, stride, pad, after, n)) in shapes.iter().enumerate() {
        let out = |x: usize| (x + pad + after - k) / stride + 1;
        let g = Im2Col {
            h,
            w,
            c,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            oh: out(h),
            ow: out(w),
        };
        let x = random(h * w * c, 50 + s as u64);
        let wts = random(g.patch_len() * n, 60 + s as u64);
        let bias = random(n, 70 + s as u64);
        let clamp = Clamp { lo: -0.5, hi: 1.5 };
        for isa in Isa::all_available() {
            let b = PackedB::new(isa, g.patch_len(), n, |p, j| wts[p * n + j], &bias);
            let mut patches = vec![0.0; g.ow * g.patch_len()];
            for oy in 0..g.oh {
                g.run_rows(&x, oy..oy + 1, &mut patches);
                let mut want = vec![0.0; g.ow * n];
                gemm(&patches, g.ow, g.patch_len(), &b, clamp, None, &mut want);
                let mut got = vec![f32::NAN; g.ow * n + 5];
                conv_row(&g, &x, oy, &b, clamp, &mut patches, &mut got);
                assert!(
                    got[g.ow * n..].iter().all(|v| v.is_nan()),
                    "{isa:?} wrote past the row"
                );
                assert_eq!(&got[..g.ow * n], &want[..], "{isa:?} shape {s} row {oy}");
            }
        }
    }
}

#[test]
fn im2col_matches_a_direct_gather() {
    // The stem (stride 2, TF padding: nothing before), symmetric padding, stride 1, and
    // more channels than a short copy.
    for (s, &(h, w, c, k, stride, pad)) in [
        (224, 224, 3, 3, 2, 0),
        (9, 7, 3, 3, 1, 1),
        (8, 10, 8, 3, 2, 1),
        (6, 6, 5, 5, 1, 2),
    ]
    .iter()
    .enumerate()
    {
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let g = Im2Col {
            h,
            w,
            c,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            oh,
            ow,
        };
        let x = random(h * w * c, 40 + s as u64);
        let mut got = vec![f32::NAN; oh * ow * g.patch_len()];
        g.run(&x, &mut got);
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..k {
                    for kx in 0..k {
                        for ch in 0..c {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                            let want = if inside {
                                x[(iy as usize * w + ix as usize) * c + ch]
                            } else {
                                0.0
                            };
                            let at = (oy * ow + ox) * g.patch_len() + (ky * k + kx) * c + ch;
                            assert_eq!(got[at], want, "{h}x{w}x{c} k{k} s{stride} p{pad} at {at}");
                        }
                    }
                }
            }
        }
    }
}
