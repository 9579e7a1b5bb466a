//! Preprocessing, exactly the model's input contract (see `models/README.md` and
//! `docs/model.md`): decode, convert to RGB, resize with one of Pillow's filters (stretched,
//! or the shorter side as torchvision), centre-crop, normalize (scale, offset, mean, std), in
//! the model's channel order and layout ([`Preprocessor`]). Pure functions.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

use serde::{Deserialize, Serialize};

/// Why an image is not in `Results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageErrorKind {
    /// The object could not be read.
    Fetch,
    /// Zero bytes.
    Empty,
    /// Not a supported image format (or not an image at all).
    Unsupported,
    /// A supported format that failed to decode (corrupt, truncated).
    Decode,
    /// More pixels than `max_pixels` (decompression-bomb guard).
    TooLarge,
    /// The model failed on it.
    Inference,
    /// The object was gone when it was read (deleted or renamed after the listing).
    NotFound,
    /// Reading it was refused: a bucket or KMS key policy (S3 403 AccessDenied), or local
    /// file permissions.
    AccessDenied,
    /// It is in an archive storage class (S3 Glacier Flexible Retrieval or Deep Archive:
    /// `InvalidObjectState`) and must be restored before it can be read.
    Archived,
    /// Its content changed after the run listed it (its ETag, or its size and modification
    /// time locally, no longer match the listing's): the run's id covers the listed content.
    Changed,
    /// It cannot be read as a file: locally a dangling symbolic link, a symbolic-link loop,
    /// a named pipe, a socket or a device named like an image, or a key no store accepts.
    Unreadable,
}

mod geometry;
mod resample;
mod spec;
mod thumbnail;

pub use thumbnail::decode_thumbnail_rgb8;

pub use geometry::shorter_side_size;
pub use spec::{
    resize, ChannelOrder, Layout, Preprocessing, Preprocessor, ResizeFilter, ResizeMode,
};

/// A decoded 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// Why one image could not be turned into a model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreprocessError {
    /// The kind, for the error list.
    pub kind: ImageErrorKind,
    /// A specific message.
    pub reason: String,
}

impl PreprocessError {
    fn new(kind: ImageErrorKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// Decodes JPEG or PNG bytes to RGB8: grayscale, gray+alpha, RGBA (alpha dropped, as Pillow's
/// `convert("RGB")`), CMYK and 16-bit inputs are all converted (see `to_rgb8_as_pillow`). The
/// EXIF orientation is not applied, as Pillow's `Image.open` does not. Images with more than
/// `max_pixels` pixels are rejected from their header, before any pixel is decoded.
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, PreprocessError> {
    use ImageErrorKind::*;
    if bytes.is_empty() {
        return Err(PreprocessError::new(Empty, "zero-byte file"));
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| PreprocessError::new(Decode, format!("cannot read header: {e}")))
    };
    let format = reader()?.format();
    match format {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        Some(other) => {
            return Err(PreprocessError::new(
                Unsupported,
                format!("{other:?} images are not supported (JPEG and PNG are)"),
            ))
        }
        None => {
            let head: String = bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(PreprocessError::new(
                Unsupported,
                format!("not a JPEG or PNG image (first bytes: {head})"),
            ));
        }
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| PreprocessError::new(Decode, format!("corrupt header: {e}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PreprocessError::new(
            TooLarge,
            format!("{width}x{height} = {pixels} pixels exceeds the limit of {max_pixels}"),
        ));
    }
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // Decoders fill a cut-off JPEG with gray without an error; Pillow refuses it, so do we.
        return Err(PreprocessError::new(
            Decode,
            "truncated JPEG (no end-of-image marker)",
        ));
    }
    if format == Some(ImageFormat::Jpeg) {
        if let Some(rgb) = decode_jpeg_libjpeg(bytes)? {
            return Ok(rgb);
        }
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    // Room for the decoded image at 16 bits and 4 channels, plus the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => PreprocessError::new(TooLarge, l.to_string()),
        image::ImageError::Unsupported(u) => PreprocessError::new(Unsupported, u.to_string()),
        other => PreprocessError::new(Decode, other.to_string()),
    })?;
    Ok(to_rgb8_as_pillow(image))
}

/// To 8-bit RGB as Pillow's `Image.open(...).convert("RGB")`: gray replicated, alpha
/// dropped, and 16-bit samples cut to their high byte (Pillow's `;16B` unpackers; the
/// `image` crate would round `v / 257` instead, one level off for many values). 16-bit
/// grayscale gets the high byte too, where Pillow's `I;16` to RGB conversion clips every
/// value above 255 to white: a deliberate difference.
fn to_rgb8_as_pillow(image: image::DynamicImage) -> Rgb8 {
    use image::DynamicImage::*;
    let (width, height) = (image.width(), image.height());
    let pixels = match image {
        ImageLuma16(_) | ImageLumaA16(_) | ImageRgb16(_) | ImageRgba16(_) => image
            .to_rgb16()
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect(),
        other => other.to_rgb8().into_raw(),
    };
    Rgb8 {
        width,
        height,
        pixels,
    }
}

/// Decodes a JPEG with libjpeg-turbo's decoder (islow IDCT, fancy upsampling: Pillow's
/// defaults). `Ok(None)` for CMYK / YCCK, which libjpeg cannot convert to RGB: the caller
/// falls back to the `image` crate for those.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<Rgb8>, PreprocessError> {
    use mozjpeg::ColorSpace;
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<Rgb8>> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(
            decompress.color_space(),
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let mut started = decompress.rgb()?;
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(Some(Rgb8 {
            width,
            height,
            pixels,
        }))
    });
    match decoded {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(PreprocessError::new(
            ImageErrorKind::Decode,
            format!("corrupt JPEG: {e}"),
        )),
        // libjpeg's fatal errors unwind with their message as the payload.
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg failed".into());
            Err(PreprocessError::new(
                ImageErrorKind::Decode,
                format!("corrupt JPEG: {message}"),
            ))
        }
    }
}

/// Whether a JPEG stream ends with its end-of-image marker (trailing padding allowed).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Resizes RGB8 to `width` x `height` exactly as Pillow 13's `Image.resize((width, height),
/// Image.BICUBIC)` (Catmull-Rom, a = -0.5), byte for byte, enlarging or shrinking: see
/// [`resample`] for Pillow's rules (fast_image_resize, used before, matches Pillow when
/// enlarging but not when shrinking: its window sizes and pass order differ).
pub fn resize_bicubic(image: &Rgb8, width: u32, height: u32) -> Result<Rgb8, PreprocessError> {
    resize(ResizeFilter::Bicubic, image, width, height)
}

/// Writes `pixel * scale + offset` into `out` (NHWC for one image, RGB order).
pub fn normalize_into(image: &Rgb8, scale: f32, offset: f32, out: &mut [f32]) {
    debug_assert_eq!(out.len(), image.pixels.len());
    for (o, &p) in out.iter_mut().zip(&image.pixels) {
        *o = f32::from(p) * scale + offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Rgb8 {
        let mut pixels = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                pixels.push(((x * 255) / (width - 1)) as u8);
                pixels.push(((y * 255) / (height - 1)) as u8);
                pixels.push((((x + y) * 37) % 256) as u8);
            }
        }
        Rgb8 {
            width,
            height,
            pixels,
        }
    }

    /// Expected values from Pillow 13 (`Image.frombytes("RGB", (w, h), data).resize(
    /// (sw, sh), Image.BICUBIC)`), computed once by `tests/fixtures/pillow_resize.py` on the
    /// same synthetic images, committed in `tests/fixtures/pillow_resize.json`.
    #[test]
    fn resize_matches_pillow_bicubic() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/pillow_resize.json"))
                .unwrap();
        let cases = fixtures.as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            let (tw, th) = (
                case["target_width"].as_u64().unwrap() as u32,
                case["target_height"].as_u64().unwrap() as u32,
            );
            let hex = case["pixels_hex"].as_str().unwrap().as_bytes();
            let expected: Vec<u8> = hex
                .chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
                .collect();
            let out = resize_bicubic(&gradient(w, h), tw, th).unwrap();
            assert_eq!(out.pixels.len(), expected.len());
            let max_diff = out
                .pixels
                .iter()
                .zip(&expected)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert_eq!(
                max_diff, 0,
                "{w}x{h} -> {tw}x{th}: Pillow differs by up to {max_diff}"
            );
        }
    }

    /// A 32-bit integer hash, `hash32` of `tests/fixtures/pillow_resize_shrink.py`.
    fn hash32(seed: u32, x: u32, y: u32, c: u32) -> u32 {
        let mut h = seed
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(c.wrapping_mul(0x27D4_EB2F))
            .wrapping_add(x.wrapping_mul(0x85EB_CA77))
            .wrapping_add(y.wrapping_mul(0xC2B2_AE3D));
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        h ^= h >> 12;
        h = h.wrapping_mul(0x297A_2D39);
        h ^ (h >> 15)
    }

    /// `synthetic()` of `tests/fixtures/pillow_resize_shrink.py`: noise, gradients, hard
    /// edges, or a "photo" (shading plus texture).
    fn synthetic_rgb8(kind: &str, seed: u32, width: u32, height: u32) -> Rgb8 {
        let (w, h) = (i64::from(width), i64::from(height));
        let m = w.min(h);
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            for x in 0..width {
                let (xi, yi) = (i64::from(x), i64::from(y));
                let noise = |c: u32| i64::from(hash32(seed, x, y, c));
                let rgb: [i64; 3] = match kind {
                    "noise" => [noise(0) & 0xFF, noise(1) & 0xFF, noise(2) & 0xFF],
                    "gradient" => [
                        xi * 255 / (w - 1).max(1),
                        yi * 255 / (h - 1).max(1),
                        (xi + yi) * 255 / (w + h - 2).max(1),
                    ],
                    "edges" => [
                        ((xi / 7 + yi / 5) % 2) * 255,
                        if (xi * 3 + yi) % 23 < 11 { 230 } else { 20 },
                        if 9 * ((2 * xi - w).pow(2) + (2 * yi - h).pow(2)) < 4 * m * m {
                            250
                        } else {
                            5
                        },
                    ],
                    "photo" => [
                        (xi * 200 / (w - 1).max(1) + 30 + (noise(0) & 0x3F) - 32).clamp(0, 255),
                        (yi * 200 / (h - 1).max(1) + 20 + (noise(1) & 0x3F) - 32).clamp(0, 255),
                        (((xi / 16 + yi / 16) % 2) * 120 + 60 + (noise(2) & 0x3F) - 32)
                            .clamp(0, 255),
                    ],
                    other => panic!("unknown synthetic image kind {other}"),
                };
                pixels.extend(rgb.map(|v| v as u8));
            }
        }
        Rgb8 {
            width,
            height,
            pixels,
        }
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        hex.as_bytes()
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// Shrinking (integer and non-integer ratios), one axis shrinking and the other growing,
    /// 3000x40 / 40x3000 / 20x3000, 4000x3000, 1x1, ...: Pillow 13's bytes, checked by the
    /// sha256 of the whole output and 512 sampled bytes (`tests/fixtures/pillow_resize_shrink.py`).
    #[test]
    fn resize_matches_pillow_bicubic_when_shrinking() {
        use sha2::{Digest, Sha256};
        let fixtures: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/pillow_resize_shrink.json"
        ))
        .unwrap();
        let cases = fixtures.as_array().unwrap();
        assert!(cases.len() >= 15);
        let mut failures = Vec::new();
        for case in cases {
            let get = |k: &str| case[k].as_u64().unwrap() as u32;
            let kind = case["kind"].as_str().unwrap();
            let (w, h, tw, th) = (
                get("width"),
                get("height"),
                get("target_width"),
                get("target_height"),
            );
            let image = synthetic_rgb8(kind, get("seed"), w, h);
            let out = resize_bicubic(&image, tw, th).unwrap();
            assert_eq!(out.pixels.len(), (tw * th * 3) as usize);
            let samples = from_hex(case["samples_hex"].as_str().unwrap());
            let n = samples.len();
            let len = out.pixels.len();
            let max_diff = samples
                .iter()
                .enumerate()
                .map(|(k, &expected)| out.pixels[k * len / n].abs_diff(expected))
                .max()
                .unwrap();
            let digest: String = Sha256::digest(&out.pixels)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let same = digest == case["sha256"].as_str().unwrap();
            println!(
                "{kind:8} {w}x{h} -> {tw}x{th}: max byte difference over {n} samples {max_diff}, \
                 sha256 of all {len} bytes {}",
                if same { "equal" } else { "DIFFERENT" }
            );
            if max_diff != 0 || !same {
                failures.push(format!("{kind} {w}x{h} -> {tw}x{th} (max diff {max_diff})"));
            }
        }
        assert!(failures.is_empty(), "differ from Pillow: {failures:?}");
    }

    /// NEAREST, BILINEAR and LANCZOS: Pillow 13's bytes on enlarging, shrinking, mixed and
    /// extreme cases (`tests/fixtures/pillow_filters.py`), by sha256 and 256 sampled bytes.
    #[test]
    fn resize_matches_pillow_for_every_filter() {
        use sha2::{Digest, Sha256};
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/pillow_filters.json"))
                .unwrap();
        let cases = fixtures.as_array().unwrap();
        assert!(cases.len() >= 30);
        let mut failures = Vec::new();
        for case in cases {
            let get = |k: &str| case[k].as_u64().unwrap() as u32;
            let (kind, filter) = (
                case["kind"].as_str().unwrap(),
                case["filter"].as_str().unwrap(),
            );
            let filter: ResizeFilter =
                serde_json::from_value(serde_json::Value::String(filter.into())).unwrap();
            let (w, h, tw, th) = (
                get("width"),
                get("height"),
                get("target_width"),
                get("target_height"),
            );
            let image = synthetic_rgb8(kind, get("seed"), w, h);
            let out = resize(filter, &image, tw, th).unwrap();
            let samples = from_hex(case["samples_hex"].as_str().unwrap());
            let (n, len) = (samples.len(), out.pixels.len());
            assert_eq!(len, (tw * th * 3) as usize);
            let max_diff = samples
                .iter()
                .enumerate()
                .map(|(k, &expected)| out.pixels[k * len / n].abs_diff(expected))
                .max()
                .unwrap();
            let digest: String = Sha256::digest(&out.pixels)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if max_diff != 0 || digest != case["sha256"].as_str().unwrap() {
                failures.push(format!(
                    "{filter:?} {kind} {w}x{h} -> {tw}x{th} (max sampled diff {max_diff})"
                ));
            }
        }
        assert!(failures.is_empty(), "differ from Pillow: {failures:?}");
    }

    #[test]
    fn normalize_maps_to_minus_one_one() {
        let image = Rgb8 {
            width: 1,
            height: 1,
            pixels: vec![0, 255, 128],
        };
        let mut out = [0f32; 3];
        normalize_into(&image, 1.0 / 127.5, -1.0, &mut out);
        assert_eq!(out[0], -1.0);
        assert!((out[1] - 1.0).abs() < 1e-6);
        assert!((out[2] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    fn encode(image: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_gray_rgba_and_16_bit_to_rgb() {
        let gray =
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 3, image::Luma([200])));
        let rgb = decode_rgb8(&encode(gray, ImageFormat::Png), 1000).unwrap();
        assert_eq!((rgb.width, rgb.height), (4, 3));
        assert_eq!(&rgb.pixels[..3], &[200, 200, 200]);
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([10, 20, 30, 0]),
        ));
        assert_eq!(
            &decode_rgb8(&encode(rgba, ImageFormat::Png), 1000)
                .unwrap()
                .pixels[..3],
            &[10, 20, 30]
        );
        let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([65535u16, 0, 32896]),
        ));
        assert_eq!(
            &decode_rgb8(&encode(deep, ImageFormat::Png), 1000)
                .unwrap()
                .pixels[..3],
            &[255, 0, 128]
        );
    }

    /// Pillow opens 16-bit RGB, RGBA and gray+alpha PNGs with their high byte: 0x7FFF -> 127,
    /// 0xFF7F -> 255, 300 -> 1 (checked with Pillow 13).
    #[test]
    fn sixteen_bit_samples_keep_their_high_byte_as_pillow() {
        let values = [0x7FFFu16, 0x80FF, 0x0080, 0xFF7F, 300, 65535];
        let expected: Vec<u8> = values.iter().map(|v| (v >> 8) as u8).collect();
        assert_eq!(expected, [127, 128, 0, 255, 1, 255]);
        let rgb = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(6, 1, |x, _| {
            image::Rgb([values[x as usize]; 3])
        }));
        let decoded = decode_rgb8(&encode(rgb, ImageFormat::Png), 1000).unwrap();
        let reds: Vec<u8> = decoded.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, expected);
        let gray = image::DynamicImage::ImageLumaA16(image::ImageBuffer::from_fn(6, 1, |x, _| {
            image::LumaA([values[x as usize], 1])
        }));
        let decoded = decode_rgb8(&encode(gray, ImageFormat::Png), 1000).unwrap();
        let blues: Vec<u8> = decoded.pixels.chunks(3).map(|p| p[2]).collect();
        assert_eq!(blues, expected);
    }

    #[test]
    fn rejects_bad_inputs_with_specific_kinds() {
        use ImageErrorKind::*;
        assert_eq!(decode_rgb8(&[], 100).unwrap_err().kind, Empty);
        assert_eq!(
            decode_rgb8(b"hello, not an image", 100).unwrap_err().kind,
            Unsupported
        );
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode_rgb8(gif, 100).unwrap_err().kind, Unsupported);
        let jpeg = encode(
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                64,
                64,
                image::Rgb([1, 2, 3]),
            )),
            ImageFormat::Jpeg,
        );
        let truncated = &jpeg[..jpeg.len() / 2];
        assert_eq!(decode_rgb8(truncated, 100_000).unwrap_err().kind, Decode);
        let big = decode_rgb8(&jpeg, 64 * 64 - 1).unwrap_err();
        assert_eq!(big.kind, TooLarge);
        assert!(big.reason.contains("4096 pixels"), "{}", big.reason);
        let mut corrupt = jpeg.clone();
        for b in corrupt.iter_mut().skip(20).take(200) {
            *b = 0x55;
        }
        assert_eq!(decode_rgb8(&corrupt, 100_000).unwrap_err().kind, Decode);
    }
}
