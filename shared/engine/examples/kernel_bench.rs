//! Prints the time of each native-executor kernel on every convolution shape of MobileNetV2
//! 1.0/224 (random tensors, 1 thread), for each instruction set this CPU has. A benchmark:
//! it prints numbers and asserts nothing.
//!
//! cargo run --example kernel_bench -p featurize-engine [--release] [-- avx512|avx2|portable] [reps]

use std::time::Instant;

use engine::executor::kernels::{conv_row, gemm, Aligned, Clamp, Depthwise, Im2Col, Isa, PackedB};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// Median ms of `reps` runs of `f`.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let isas: Vec<Isa> = match args.first().and_then(|a| Isa::parse(a)) {
        Some(isa) => vec![isa],
        None => Isa::all_available(),
    };
    let reps: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(9);
    for isa in isas {
        println!("{} (ms per call, median of {reps}; GFMA/s)", isa.name());
        let total_pw = pointwise(isa, reps);
        let total_dw = depthwise(isa, reps);
        let stem = stem(isa, reps);
        println!(
            "  totals: pointwise {total_pw:.3} ms, depthwise {total_dw:.3} ms, stem {stem:.3} ms, sum {:.3} ms",
            total_pw + total_dw + stem
        );
    }
}

const RELU6: Clamp = Clamp { lo: 0.0, hi: 6.0 };

// Tensors and weights 64-byte aligned, as the executor keeps them.
// (h, cin, cout) of the pointwise convolutions, each with its count in the model.
const POINTWISE: [(usize, usize, usize, usize); 19] = [
    (112, 32, 16, 1),
    (112, 16, 96, 1),
    (56, 96, 24, 1),
    (56, 24, 144, 2),
    (56, 144, 24, 1),
    (28, 144, 32, 1),
    (28, 32, 192, 3),
    (28, 192, 32, 2),
    (14, 192, 64, 1),
    (14, 64, 384, 4),
    (14, 384, 64, 3),
    (14, 384, 96, 1),
    (14, 96, 576, 3),
    (14, 576, 96, 2),
    (7, 576, 160, 1),
    (7, 160, 960, 3),
    (7, 960, 160, 2),
    (7, 960, 320, 1),
    (7, 320, 1280, 1),
];
// (input h, channels, stride, count) of the depthwise ones.
const DEPTHWISE: [(usize, usize, usize, usize); 10] = [
    (112, 32, 1, 1),
    (112, 96, 2, 1),
    (56, 144, 1, 1),
    (56, 144, 2, 1),
    (28, 192, 1, 2),
    (28, 192, 2, 1),
    (14, 384, 1, 4),
    (14, 576, 1, 2),
    (14, 576, 2, 1),
    (7, 960, 1, 3),
];

/// Every pointwise convolution of the model; returns their total, counted as in the model.
fn pointwise(isa: Isa, reps: usize) -> f64 {
    let relu6 = RELU6;
    let mut total_pw = 0.0;
    for (i, &(h, k, n, count)) in POINTWISE.iter().enumerate() {
        let m = h * h;
        let a = Aligned::from(random(m * k, i as u64));
        let w = random(k * n, 50 + i as u64);
        let bias = random(n, 90 + i as u64);
        let b = PackedB::new(isa, k, n, |p, j| w[p * n + j], &bias);
        let mut c = Aligned::zeroed(m * n);
        let ms = time(reps, || gemm(&a, m, k, &b, relu6, None, &mut c));
        total_pw += ms * count as f64;
        println!(
            "  pointwise {h:3}x{h:<3} {k:4} -> {n:4}  x{count}  {ms:8.3}  {:6.1}",
            (m * k * n) as f64 / (ms * 1e6)
        );
    }
    total_pw
}

/// Every depthwise convolution of the model; returns their total, counted as in the model.
fn depthwise(isa: Isa, reps: usize) -> f64 {
    let relu6 = RELU6;
    let mut total_dw = 0.0;
    for (i, &(h, c, stride, count)) in DEPTHWISE.iter().enumerate() {
        let oh = h / stride;
        let pad = if stride == 2 { (0, 0) } else { (1, 1) };
        let d = Depthwise {
            isa,
            h,
            w: h,
            c,
            kh: 3,
            kw: 3,
            stride: (stride, stride),
            pad,
            oh,
            ow: oh,
            weights: random(9 * c, 7 + i as u64).into(),
            bias: random(c, 8 + i as u64).into(),
            clamp: relu6,
        };
        let x = Aligned::from(random(h * h * c, i as u64));
        let mut out = Aligned::zeroed(oh * oh * c);
        let ms = time(reps, || d.run(&x, &mut out));
        total_dw += ms * count as f64;
        println!(
            "  depthwise {h:3}x{h:<3} {c:4} s{stride}       x{count}  {ms:8.3}  {:6.1}",
            (oh * oh * c * 9) as f64 / (ms * 1e6)
        );
    }
    total_dw
}

/// The stem (3x3 stride 2 on RGB): whole, and by rows as the fused block runs it.
fn stem(isa: Isa, reps: usize) -> f64 {
    let relu6 = RELU6;
    let g = Im2Col {
        h: 224,
        w: 224,
        c: 3,
        kh: 3,
        kw: 3,
        stride: (2, 2),
        pad: (0, 0),
        oh: 112,
        ow: 112,
    };
    let x = Aligned::from(random(224 * 224 * 3, 1));
    let w = random(27 * 32, 2);
    let b = PackedB::new(isa, 27, 32, |p, j| w[p * 32 + j], &[0.0; 32]);
    let mut patches = Aligned::zeroed(112 * 112 * 27);
    let mut out = Aligned::zeroed(112 * 112 * 32);
    let stem = time(reps, || {
        g.run(&x, &mut patches);
        gemm(&patches, 112 * 112, 27, &b, relu6, None, &mut out);
    });
    println!("  stem (im2col + gemm) {stem:8.3}");
    // As the fused stem block runs it: one output row at a time (a row of patches in L1).
    let mut row_patches = Aligned::zeroed(112 * 27);
    let rows_im2col = time(reps, || {
        for oy in 0..112 {
            g.run_rows(&x, oy..oy + 1, &mut row_patches);
        }
    });
    let rows_gemm = time(reps, || {
        for oy in 0..112 {
            gemm(
                &row_patches,
                112,
                27,
                &b,
                relu6,
                None,
                &mut out[oy * 112 * 32..][..112 * 32],
            );
        }
    });
    let rows_direct = time(reps, || {
        for oy in 0..112 {
            conv_row(
                &g,
                &x,
                oy,
                &b,
                relu6,
                &mut row_patches,
                &mut out[oy * 112 * 32..][..112 * 32],
            );
        }
    });
    println!(
        "  stem by rows: im2col {rows_im2col:.3}, gemm {rows_gemm:.3} ({:.1} GFMA/s); without patches (conv_row) {rows_direct:.3}",
        112.0 * 112.0 * 27.0 * 32.0 / rows_gemm / 1e6
    );
    stem
}
