//! Preprocessing, exactly the model's input contract (see `models/README.md`): decode, convert
//! to RGB, resize with Pillow's bicubic filter, scale to the model's range, NHWC. Pure functions.

use std::io::Cursor;

use fast_image_resize::images::Image as ResizeImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageFormat, ImageReader};

use crate::manifest::ImageErrorKind;

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
/// `convert("RGB")`), CMYK and 16-bit inputs are all converted. Images with more than
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
    let rgb = image.to_rgb8();
    Ok(Rgb8 {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
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

/// Resizes RGB8 to `width` x `height` with Pillow's BICUBIC (Catmull-Rom, a = -0.5) convolution.
pub fn resize_bicubic(
    resizer: &mut Resizer,
    image: &Rgb8,
    width: u32,
    height: u32,
) -> Result<Rgb8, PreprocessError> {
    let fail = |e: String| PreprocessError::new(ImageErrorKind::Decode, format!("resize: {e}"));
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    // Pillow resamples horizontally first, then vertically, rounding to 8 bits after each
    // pass (round half up, clamp); fast_image_resize does u8 images vertically first, with
    // 16-bit coefficients. Two one-axis passes in f32, each rounded as Pillow rounds,
    // reproduce Pillow's bytes.
    let (src_w, src_h) = (image.width, image.height);
    let pass = |resizer: &mut Resizer, pixels: &[u8], (w, h): (u32, u32), (tw, th): (u32, u32)| {
        let floats: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
        let src = ResizeImage::from_vec_u8(w, h, f32s_to_bytes(&floats), PixelType::F32x3)
            .map_err(|e| fail(e.to_string()))?;
        let mut dst = ResizeImage::new(tw, th, PixelType::F32x3);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| fail(e.to_string()))?;
        Ok::<Vec<u8>, PreprocessError>(
            bytes_to_f32s(dst.buffer())
                .map(|v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
                .collect(),
        )
    };
    let horizontal = if src_w == width {
        image.pixels.clone()
    } else {
        pass(resizer, &image.pixels, (src_w, src_h), (width, src_h))?
    };
    let pixels = if src_h == height {
        horizontal
    } else {
        pass(resizer, &horizontal, (width, src_h), (width, height))?
    };
    Ok(Rgb8 {
        width,
        height,
        pixels,
    })
}

fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn bytes_to_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
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
            serde_json::from_str(include_str!("../../tests/fixtures/pillow_resize.json")).unwrap();
        let mut resizer = Resizer::new();
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
            let out = resize_bicubic(&mut resizer, &gradient(w, h), tw, th).unwrap();
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
