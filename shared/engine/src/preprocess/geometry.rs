//! The geometry of preprocessing, as the Python tools do it: Pillow's NEAREST resize,
//! torchvision's `Resize(int)` output size on a PIL image, and torchvision's `CenterCrop`
//! (zero padding first when the image is smaller than the crop).

/// Channels of an RGB pixel.
const CHANNELS: usize = 3;

/// Resizes interleaved RGB8 to `target_width` x `target_height` exactly as Pillow 13's
/// `Image.resize(size, Image.NEAREST)`. Pillow does not convolve for NEAREST: `_resize` calls
/// `ImagingTransform` with the affine map `x_in = x * (w / tw)` (no offset), which
/// `ImagingScaleAffine` samples at each output pixel's centre, `(x + 0.5) * (w / tw)`, with the
/// position *accumulated* in `f64` (`xo = a0 / 2`, then `xo += a0` per pixel) and truncated to
/// an index; a position that falls outside the input gives a black pixel (`fill = 1`). The
/// accumulation is reproduced here operation for operation, since its rounding decides the
/// index at exact halves. All sizes must be at least 1.
pub(crate) fn resize_nearest(
    pixels: &[u8],
    (width, height): (u32, u32),
    (target_width, target_height): (u32, u32),
) -> Vec<u8> {
    assert!(width > 0 && height > 0 && target_width > 0 && target_height > 0);
    assert_eq!(pixels.len(), width as usize * height as usize * CHANNELS);
    if (width, height) == (target_width, target_height) {
        return pixels.to_vec();
    }
    let columns = sample_positions(width, target_width);
    let rows = sample_positions(height, target_height);
    let (w, tw) = (width as usize, target_width as usize);
    let mut out = vec![0u8; tw * target_height as usize * CHANNELS];
    for (out_line, row) in out.chunks_exact_mut(tw * CHANNELS).zip(rows) {
        let Some(y) = row else { continue };
        let line = &pixels[y * w * CHANNELS..][..w * CHANNELS];
        for (pixel, column) in out_line.chunks_exact_mut(CHANNELS).zip(&columns) {
            if let Some(x) = column {
                pixel.copy_from_slice(&line[x * CHANNELS..][..CHANNELS]);
            }
        }
    }
    out
}

/// The input index each of `out_size` outputs reads (`None`: outside, black), as
/// `ImagingScaleAffine` computes it. The box bounds are C floats (`box[2] - box[0]`, exact).
fn sample_positions(in_size: u32, out_size: u32) -> Vec<Option<usize>> {
    let a = f64::from(in_size as f32) / f64::from(out_size);
    let mut position = 0.0 + a * 0.5;
    let mut out = Vec::with_capacity(out_size as usize);
    for _ in 0..out_size {
        // Pillow's COORD: -1 below zero, else C's truncation.
        let index = if position < 0.0 { -1 } else { position as i64 };
        out.push(
            (0..i64::from(in_size))
                .contains(&index)
                .then_some(index as usize),
        );
        position += a;
    }
    out
}

/// The size torchvision's `Resize(size)` (an int) gives a PIL image of `width` x `height`:
/// the shorter side becomes `size`, the longer `int(size * long / short)` (truncated, in
/// Python's correctly rounded float division); a square stays square. `(width, height)`.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // `size * long` is exact in f64 for any image (< 2^53), so this division is Python's.
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Python's `int(round(n / 2))` for an integer `n >= 0`: halves go to the even neighbour.
fn half_round_even(n: u32) -> u32 {
    let floor = n / 2;
    if n % 2 == 1 && floor % 2 == 1 {
        floor + 1
    } else {
        floor
    }
}

/// Where a centre crop of `crop` out of `size` starts, in the coordinates of the unpadded
/// image (negative: inside the zero padding), as torchvision's `CenterCrop`: when the image is
/// smaller it is first padded by `(crop - size) // 2` before and the rest after, and then the
/// crop starts at `round((padded - crop) / 2)` (half to even).
fn crop_start(size: u32, crop: u32) -> i64 {
    if crop > size {
        // Padded to exactly `crop`: the crop is the padded image.
        -i64::from((crop - size) / 2)
    } else {
        i64::from(half_round_even(size - crop))
    }
}

/// torchvision's `CenterCrop([crop_height, crop_width])` of interleaved RGB8, zero-padded
/// where the image is smaller than the crop.
pub(crate) fn center_crop(
    pixels: &[u8],
    (width, height): (u32, u32),
    (crop_width, crop_height): (u32, u32),
) -> Vec<u8> {
    assert_eq!(pixels.len(), width as usize * height as usize * CHANNELS);
    let (left, top) = (
        crop_start(width, crop_width),
        crop_start(height, crop_height),
    );
    let (w, cw) = (i64::from(width), crop_width as usize);
    let mut out = vec![0u8; cw * crop_height as usize * CHANNELS];
    // The columns of the crop that lie inside the image, and where they start in it.
    let first_column = (-left).max(0);
    let last_column = (w - left).min(cw as i64);
    if first_column >= last_column {
        return out;
    }
    let span = (last_column - first_column) as usize * CHANNELS;
    for (y, out_line) in out.chunks_exact_mut(cw * CHANNELS).enumerate() {
        let source_row = y as i64 + top;
        if !(0..i64::from(height)).contains(&source_row) {
            continue;
        }
        let source = (source_row * w + left + first_column) as usize * CHANNELS;
        out_line[first_column as usize * CHANNELS..][..span]
            .copy_from_slice(&pixels[source..][..span]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_truncates_as_torchvision() {
        // 256 * 500 / 375 = 341.33 -> 341; 256 * 301 / 200 = 385.28 -> 385.
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(200, 301, 256), (256, 385));
        assert_eq!(shorter_side_size(100, 100, 256), (256, 256));
        // 224 * 500 / 375 = 298.67 -> 298 (truncated, not rounded).
        assert_eq!(shorter_side_size(375, 500, 224), (224, 298));
        assert_eq!(shorter_side_size(1000, 999, 224), (224, 224));
    }

    #[test]
    fn crop_rounds_half_to_even_and_pads_when_small() {
        // (385 - 224) / 2 = 80.5 -> 80; (387 - 224) / 2 = 81.5 -> 82; 16 exact.
        assert_eq!(crop_start(385, 224), 80);
        assert_eq!(crop_start(387, 224), 82);
        assert_eq!(crop_start(256, 224), 16);
        assert_eq!(crop_start(224, 224), 0);
        // 200 -> 224: 12 zero columns before, 12 after; 199 -> 224: 12 before, 13 after.
        assert_eq!(crop_start(200, 224), -12);
        assert_eq!(crop_start(199, 224), -12);
    }

    #[test]
    fn center_crop_pads_with_zeros() {
        // A 2x1 image, cropped to 4x3: one zero row above and below, one column each side.
        let pixels = [10, 11, 12, 20, 21, 22];
        let out = center_crop(&pixels, (2, 1), (4, 3));
        let row = |y: usize| &out[y * 12..][..12];
        assert_eq!(row(0), &[0; 12]);
        assert_eq!(row(1), &[0, 0, 0, 10, 11, 12, 20, 21, 22, 0, 0, 0]);
        assert_eq!(row(2), &[0; 12]);
        // Cropping inside: a 5x1 image to 2x1 starts at round(1.5) = 2.
        let line: Vec<u8> = (0..15).collect();
        assert_eq!(center_crop(&line, (5, 1), (2, 1)), [6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn nearest_samples_pixel_centres() {
        // 4 -> 2: positions 1.0 and 3.0; 2 -> 4: 0.25, 0.75, 1.25, 1.75 -> 0, 0, 1, 1.
        assert_eq!(
            sample_positions(4, 2),
            [Some(1), Some(3)].into_iter().collect::<Vec<_>>()
        );
        assert_eq!(
            sample_positions(2, 4),
            [Some(0), Some(0), Some(1), Some(1)]
                .into_iter()
                .collect::<Vec<_>>()
        );
        let pixels: Vec<u8> = (0..4 * 3).map(|i| i as u8).collect();
        assert_eq!(
            resize_nearest(&pixels, (4, 1), (2, 1)),
            [3, 4, 5, 9, 10, 11]
        );
    }
}
