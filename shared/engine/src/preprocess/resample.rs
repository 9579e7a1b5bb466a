//! Pillow's convolution resizes of 8-bit RGB (BILINEAR, BICUBIC, LANCZOS), reproduced to the
//! byte.
//!
//! A transcription of Pillow 13's `libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`,
//! `ImagingResampleInner`) for `Image.resize(size, filter)` with Pillow's defaults
//! (no `box`, `reducing_gap=None`, hence no `reduce()` step). The filters differ only in
//! their kernel and support (bilinear: triangle, 1; bicubic: Catmull-Rom, 2; lanczos:
//! `sinc(x) * sinc(x / 3)`, 3); NEAREST does not go through this code (see `nearest.rs`):
//!
//! - one pass per axis that changes size, each rounded to 8 bits; the horizontal one first,
//!   unless the height shrinks by more than twice as many pixels as the width (Pillow 13's
//!   `ImagingResampleInner`; older versions order the passes differently);
//! - for each output index `i`, the window is centred on `(i + 0.5) * scale`, its half-width
//!   is the filter's support times `max(scale, 1)`: when shrinking, the
//!   filter is stretched so that every input pixel contributes (fast_image_resize differs
//!   from Pillow there);
//! - the taps are normalised by their sum in `f64`, then turned into fixed point with
//!   `PRECISION_BITS = 32 - 8 - 2` fractional bits (round half away from zero), accumulated
//!   in `i32` from `1 << (PRECISION_BITS - 1)` (round half up) and clipped to 0..=255.
//!
//! Coefficients are computed with the same `f64` operations in the same order as the C code
//! (Rust never contracts them into FMAs, nor does Pillow's x86-64 build), and the integer
//! sums are exact, so the result is Pillow's whatever order the sums are taken in: the
//! horizontal pass sums 8 taps (24 bytes) at a time, which the compiler vectorizes.

use std::ops::Range;

/// Fractional bits of the fixed-point coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding term every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Channels of an RGB pixel.
const CHANNELS: usize = 3;

/// A convolution filter of Pillow's `Resample.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// `BILINEAR`: the triangle, support 1.
    Bilinear,
    /// `BICUBIC`: Catmull-Rom (`a = -0.5`), support 2.
    Bicubic,
    /// `LANCZOS`: `sinc(x) * sinc(x / 3)` on `[-3, 3)`, support 3.
    Lanczos,
}

impl Filter {
    /// Pillow's `support` of the filter (before the stretch by the scale when shrinking).
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernel at `x` (Pillow's `bilinear_filter`, `bicubic_filter`, `lanczos_filter`).
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => bilinear(x),
            Filter::Bicubic => bicubic(x),
            Filter::Lanczos => lanczos(x),
        }
    }
}

/// Pillow's `bilinear_filter`.
fn bilinear(x: f64) -> f64 {
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `sinc_filter`: `sin(pi x) / (pi x)`, 1 at 0 (`sin` is the C library's, as Pillow's).
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Pillow's `lanczos_filter`: the sinc windowed by a sinc three times wider, on `[-3, 3)`.
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `bicubic_filter` (Catmull-Rom, `a = -0.5`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point taps of one axis: output `i` reads input `start .. start + len` with
/// `weights[i * ksize ..][.. len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taps {
    /// `(start, len)` of each output's window in the input.
    pub bounds: Vec<(usize, usize)>,
    /// Stride of `weights` (Pillow's `ksize`).
    pub ksize: usize,
    /// Fixed-point weights, `ksize` per output (zero past `len`).
    pub weights: Vec<i32>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resampling `in_size`
    /// samples (the whole axis: box `0 .. in_size`) to `out_size` with `filter`.
    pub fn new(filter: Filter, in_size: u32, out_size: u32) -> Self {
        // The box bounds are C floats; their difference is exact for any image size.
        let (in0, in1) = (0f32, in_size as f32);
        let scale = f64::from(in1 - in0) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0i32; out_size as usize * ksize];
        let mut taps = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = f64::from(in0) + (f64::from(xx) + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let len = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, tap) in taps[..len].iter_mut().enumerate() {
                let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                *tap = w;
                ww += w;
            }
            if ww != 0.0 {
                for tap in &mut taps[..len] {
                    *tap /= ww;
                }
            }
            let row = &mut weights[xx as usize * ksize..][..len];
            for (fixed, &tap) in row.iter_mut().zip(&taps[..len]) {
                let scaled = tap * f64::from(1u32 << PRECISION_BITS);
                *fixed = if tap < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, len));
        }
        Self {
            bounds,
            ksize,
            weights,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..len])
    }
}

/// Pillow's `clip8`: the fixed-point sum to a byte.
#[inline(always)]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved RGB8 (`width * height * 3` bytes) to `target_width` x
/// `target_height` exactly as Pillow 13's `Image.resize((tw, th), filter)`.
/// All sizes must be at least 1.
pub(crate) fn resize_rgb8(
    filter: Filter,
    pixels: &[u8],
    (width, height): (u32, u32),
    (target_width, target_height): (u32, u32),
) -> Vec<u8> {
    assert!(width > 0 && height > 0 && target_width > 0 && target_height > 0);
    assert_eq!(pixels.len(), width as usize * height as usize * CHANNELS);
    if (width, height) == (target_width, target_height) {
        // `Image.resize` returns a copy.
        return pixels.to_vec();
    }
    let w = width as usize;
    let (tw, th) = (target_width as usize, target_height as usize);
    let need_horizontal = width != target_width;
    let need_vertical = height != target_height;
    // Pillow 13's order: vertical first when the height shrinks by more than twice as many
    // pixels as the width does (the horizontal pass then has fewer rows), else horizontal
    // first. The two orders round differently, so this matters to the byte.
    let (dh, dw) = (
        i64::from(height) - i64::from(target_height),
        i64::from(width) - i64::from(target_width),
    );
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let mut vertical = Taps::new(filter, height, target_height);
    if !horizontal_first {
        let shrunk = vertical_pass(pixels, w * CHANNELS, &vertical);
        if !need_horizontal {
            return shrunk;
        }
        return resample_rows(&shrunk, w, 0..th, &Taps::new(filter, width, target_width));
    }
    if !need_horizontal {
        return vertical_pass(pixels, w * CHANNELS, &vertical);
    }
    // Only the input rows the vertical pass reads are resampled horizontally.
    let first = vertical.bounds[0].0;
    let (last_start, last_len) = vertical.bounds[th - 1];
    let horizontal = Taps::new(filter, width, target_width);
    let resampled = resample_rows(pixels, w, first..last_start + last_len, &horizontal);
    if !need_vertical {
        return resampled;
    }
    for bound in &mut vertical.bounds {
        bound.0 -= first;
    }
    vertical_pass(&resampled, tw * CHANNELS, &vertical)
}

/// Resamples each row in `rows` of an RGB image `width` pixels wide.
fn horizontal_pass(pixels: &[u8], width: usize, rows: Range<usize>, taps: &Taps) -> Vec<u8> {
    let out_width = taps.bounds.len();
    // Each weight repeated for the three channels, so that a window of pixels and its
    // weights are two flat slices of the same length.
    let stride = taps.ksize * CHANNELS;
    let mut weights3 = vec![0i32; out_width * stride];
    for (i, row) in weights3.chunks_exact_mut(stride).enumerate() {
        let (_, weights) = taps.of(i);
        for (rgb, &w) in row.chunks_exact_mut(CHANNELS).zip(weights) {
            rgb.fill(w);
        }
    }
    let line_len = width * CHANNELS;
    let mut out = vec![0u8; rows.len() * out_width * CHANNELS];
    for (y, out_line) in rows.zip(out.chunks_exact_mut(out_width * CHANNELS)) {
        let line = &pixels[y * line_len..][..line_len];
        for (i, pixel) in out_line.chunks_exact_mut(CHANNELS).enumerate() {
            let (start, len) = taps.bounds[i];
            let window = &line[start * CHANNELS..][..len * CHANNELS];
            let weights = &weights3[i * stride..][..len * CHANNELS];
            let sums = dot_rgb(window, weights);
            pixel[0] = clip8(sums[0]);
            pixel[1] = clip8(sums[1]);
            pixel[2] = clip8(sums[2]);
        }
    }
    out
}

/// `HALF + Σ pixel * weight` per channel over interleaved RGB (`pixels.len()` a multiple of
/// 3, equal to `weights.len()`). Integer sums are exact, so summing 8 taps (24 lanes, a
/// multiple of 3: lane `l` is channel `l % 3`) at a time gives Pillow's result.
#[inline(always)]
fn dot_rgb(pixels: &[u8], weights: &[i32]) -> [i32; 3] {
    const LANES: usize = 8 * CHANNELS;
    let mut acc = [0i32; LANES];
    let mut p_chunks = pixels.chunks_exact(LANES);
    let mut w_chunks = weights.chunks_exact(LANES);
    for (p, w) in (&mut p_chunks).zip(&mut w_chunks) {
        let p: &[u8; LANES] = p.try_into().expect("chunk");
        let w: &[i32; LANES] = w.try_into().expect("chunk");
        for l in 0..LANES {
            acc[l] = acc[l].wrapping_add(i32::from(p[l]).wrapping_mul(w[l]));
        }
    }
    let mut sums = [HALF; 3];
    for (l, a) in acc.iter().enumerate() {
        sums[l % 3] = sums[l % 3].wrapping_add(*a);
    }
    for (p, w) in p_chunks
        .remainder()
        .chunks_exact(CHANNELS)
        .zip(w_chunks.remainder().chunks_exact(CHANNELS))
    {
        for c in 0..CHANNELS {
            sums[c] = sums[c].wrapping_add(i32::from(p[c]).wrapping_mul(w[c]));
        }
    }
    sums
}

/// The horizontal pass, the faster way for these taps: short windows (enlarging: at most 7
/// taps, which [`horizontal_pass`] sums one by one) by [`horizontal_pass_transposed`].
fn resample_rows(pixels: &[u8], width: usize, rows: Range<usize>, taps: &Taps) -> Vec<u8> {
    if taps.ksize < TRANSPOSED_MAX_KSIZE && width > 0 && !rows.is_empty() {
        horizontal_pass_transposed(pixels, width, rows, taps)
    } else {
        horizontal_pass(pixels, width, rows, taps)
    }
}

/// Windows shorter than this many taps are resampled by [`horizontal_pass_transposed`].
const TRANSPOSED_MAX_KSIZE: usize = 8;

/// [`horizontal_pass`] as a vertical one: each input column (the RGB of every row in
/// `rows`) becomes a line, [`vertical_pass`] resamples the lines (vectorized across the
/// rows), and the result is transposed back. The integer sums are the same, so the bytes
/// are too.
fn horizontal_pass_transposed(
    pixels: &[u8],
    width: usize,
    rows: Range<usize>,
    taps: &Taps,
) -> Vec<u8> {
    let line_len = width * CHANNELS;
    let column_len = rows.len() * CHANNELS;
    let mut columns = vec![0u8; width * column_len];
    for (r, y) in rows.enumerate() {
        let line = &pixels[y * line_len..][..line_len];
        for (x, pixel) in line.chunks_exact(CHANNELS).enumerate() {
            columns[x * column_len + r * CHANNELS..][..CHANNELS].copy_from_slice(pixel);
        }
    }
    let resampled = vertical_pass(&columns, column_len, taps);
    let out_width = taps.bounds.len();
    let mut out = vec![0u8; resampled.len()];
    for (x, column) in resampled.chunks_exact(column_len).enumerate() {
        for (r, pixel) in column.chunks_exact(CHANNELS).enumerate() {
            out[(r * out_width + x) * CHANNELS..][..CHANNELS].copy_from_slice(pixel);
        }
    }
    out
}

/// Resamples the columns of an image whose rows are `line_len` bytes: output row `i` is
/// the weighted sum of input rows `taps.bounds[i]`.
fn vertical_pass(pixels: &[u8], line_len: usize, taps: &Taps) -> Vec<u8> {
    let out_height = taps.bounds.len();
    let mut out = vec![0u8; out_height * line_len];
    let mut acc = vec![0i32; line_len];
    for (i, out_line) in out.chunks_exact_mut(line_len).enumerate() {
        acc.fill(HALF);
        let (start, weights) = taps.of(i);
        for (t, &w) in weights.iter().enumerate() {
            let line = &pixels[(start + t) * line_len..][..line_len];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
        for (o, &a) in out_line.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_follow_pillow_window_rules() {
        // Enlarging: support 2, windows of at most 4 (+1) taps, clipped at the edges.
        let up = Taps::new(Filter::Bicubic, 100, 224);
        assert_eq!(up.ksize, 5);
        assert_eq!(up.bounds[0], (0, 2));
        // Shrinking 4000 -> 224: the filter is stretched by the scale (17.86), ksize 73.
        let down = Taps::new(Filter::Bicubic, 4000, 224);
        assert_eq!(down.ksize, 73);
        // Output 112: centre 112.5 * 4000 / 224 = 2008.93, support 35.71.
        assert_eq!(down.bounds[112], (1973, 72));
        // Every window's weights sum to 1 within the rounding of each tap.
        for i in 0..224 {
            let (_, w) = down.of(i);
            let sum: i64 = w.iter().map(|&w| i64::from(w)).sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                "{i}: {sum}"
            );
        }
        // 1 pixel: every output copies it.
        let one = Taps::new(Filter::Bicubic, 1, 224);
        assert!(one.bounds.iter().all(|&b| b == (0, 1)));
        assert!((0..224).all(|i| one.of(i).1 == [1 << PRECISION_BITS]));
    }

    #[test]
    fn transposed_horizontal_pass_gives_the_same_bytes() {
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (w, h, tw) in [
            (100, 100, 224),
            (7, 3, 224),
            (1, 5, 224),
            (300, 40, 224),
            (640, 9, 224),
            (224, 4, 100),
        ] {
            let pixels: Vec<u8> = (0..w * h * CHANNELS).map(|_| next() as u8).collect();
            let taps = Taps::new(Filter::Bicubic, w as u32, tw);
            for rows in [0..h, h / 2..h] {
                assert_eq!(
                    horizontal_pass_transposed(&pixels, w, rows.clone(), &taps),
                    horizontal_pass(&pixels, w, rows.clone(), &taps),
                    "{w}x{h} -> {tw}, rows {rows:?}"
                );
            }
        }
    }

    #[test]
    fn clip8_rounds_and_clamps() {
        assert_eq!(clip8(HALF), 0);
        assert_eq!(clip8(-HALF), 0);
        assert_eq!(clip8(200 << PRECISION_BITS), 200);
        assert_eq!(clip8(300 << PRECISION_BITS), 255);
    }

    #[test]
    fn same_size_is_a_copy_and_constant_stays_constant() {
        let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            resize_rgb8(Filter::Bicubic, &pixels, (5, 4), (5, 4)),
            pixels
        );
        let flat = vec![77u8; 300 * 200 * 3];
        let out = resize_rgb8(Filter::Lanczos, &flat, (300, 200), (224, 224));
        assert!(out.iter().all(|&p| p == 77));
    }
}
