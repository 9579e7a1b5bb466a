//! Images decoded small, for thumbnails. A JPEG is decoded by libjpeg's DCT scaling at the
//! smallest of 1/8, 2/8, ..., 8/8 of its size whose longer side still covers the thumbnail,
//! so a 50-megapixel photo decodes to under a megapixel and never to its full size. Other
//! formats (PNG) have no such scaling: they are decoded whole, and only below the cap.

use std::io::Cursor;

use super::{decode_rgb8, ImageErrorKind, PreprocessError, Rgb8};

/// Decodes `bytes` for a thumbnail whose longer side is `side` pixels: a JPEG at the smallest
/// DCT scale (n/8) whose longer side is at least `side` (or 1/8 when even that is larger), any
/// other image whole. An image whose decoded size (after the scaling) has more than
/// `max_pixels` pixels is refused from its header, before any pixel is decoded.
pub fn decode_thumbnail_rgb8(
    bytes: &[u8],
    side: u32,
    max_pixels: u64,
) -> Result<Rgb8, PreprocessError> {
    let too_large = |w: u64, h: u64| {
        PreprocessError::new(
            ImageErrorKind::TooLarge,
            format!(
                "{w}x{h} = {} pixels to decode for a thumbnail exceeds {max_pixels}",
                w * h
            ),
        )
    };
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(decoded) = decode_jpeg_scaled(bytes, side, max_pixels)? {
            return Ok(decoded);
        }
    }
    // Not a JPEG, or a CMYK one: whole, under the cap (checked from the header).
    let (w, h) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .map_or((0, 0), |(w, h)| (u64::from(w), u64::from(h)));
    if w * h > max_pixels {
        return Err(too_large(w, h));
    }
    decode_rgb8(bytes, max_pixels)
}

/// The DCT scale numerator (over 8) for a longer side of `longest` to cover `side`.
fn scale_for(longest: usize, side: u32) -> u8 {
    (1..=8u8)
        .find(|&n| (longest * usize::from(n)).div_ceil(8) >= side as usize)
        .unwrap_or(8)
}

/// A JPEG decoded at its DCT scale; `None` for CMYK / YCCK (decoded whole by the caller).
fn decode_jpeg_scaled(
    bytes: &[u8],
    side: u32,
    max_pixels: u64,
) -> Result<Option<Rgb8>, PreprocessError> {
    use mozjpeg::ColorSpace;
    let corrupt =
        |m: String| PreprocessError::new(ImageErrorKind::Decode, format!("corrupt JPEG: {m}"));
    let decoded =
        std::panic::catch_unwind(|| -> std::io::Result<Result<Option<Rgb8>, (u64, u64)>> {
            let mut decompress = mozjpeg::Decompress::new_mem(bytes)?;
            if matches!(
                decompress.color_space(),
                ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
            ) {
                return Ok(Ok(None));
            }
            let (w, h) = decompress.size();
            let n = scale_for(w.max(h), side);
            let scaled = |d: usize| (d * usize::from(n)).div_ceil(8) as u64;
            if scaled(w) * scaled(h) > max_pixels {
                return Ok(Err((scaled(w), scaled(h))));
            }
            decompress.scale(n);
            let mut started = decompress.rgb()?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let pixels: Vec<u8> = started.read_scanlines()?;
            started.finish()?;
            Ok(Ok(Some(Rgb8 {
                width,
                height,
                pixels,
            })))
        });
    match decoded {
        Ok(Ok(Ok(image))) => Ok(image),
        Ok(Ok(Err((w, h)))) => Err(PreprocessError::new(
            ImageErrorKind::TooLarge,
            format!(
                "{w}x{h} = {} pixels to decode for a thumbnail exceeds {max_pixels}",
                w * h
            ),
        )),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        // libjpeg's fatal errors unwind with their message as the payload.
        Err(payload) => Err(corrupt(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg failed".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
            .encode_image(&image)
            .unwrap();
        out
    }

    #[test]
    fn jpegs_are_decoded_at_the_smallest_dct_scale_that_covers_the_thumbnail() {
        assert_eq!(scale_for(4000, 64), 1);
        assert_eq!(scale_for(400, 64), 2, "400/8 = 50 < 64: 2/8 = 100");
        assert_eq!(scale_for(64, 64), 8);
        assert_eq!(scale_for(10, 64), 8, "small images whole");
        let big = jpeg(2000, 1000);
        let small = decode_thumbnail_rgb8(&big, 64, 1_000_000).unwrap();
        assert_eq!((small.width, small.height), (250, 125), "decoded at 1/8");
        assert_eq!(small.pixels.len(), 250 * 125 * 3);
        // Whole, it would be 2 megapixels: over a cap of 1 Mpx, it still decodes (at 1/8).
        let whole = decode_rgb8(&big, u64::MAX).unwrap();
        assert_eq!((whole.width, whole.height), (2000, 1000));
        // A cap below even the 1/8 size refuses it from the header.
        let refused = decode_thumbnail_rgb8(&big, 64, 10_000).unwrap_err();
        assert_eq!(refused.kind, ImageErrorKind::TooLarge);
        assert!(refused.reason.contains("250x125"), "{}", refused.reason);
    }

    #[test]
    fn other_formats_are_decoded_whole_under_the_cap() {
        let image = image::RgbImage::from_pixel(300, 200, image::Rgb([1, 2, 3]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let decoded = decode_thumbnail_rgb8(&png, 64, 60_000).unwrap();
        assert_eq!((decoded.width, decoded.height), (300, 200));
        let refused = decode_thumbnail_rgb8(&png, 64, 59_999).unwrap_err();
        assert_eq!(refused.kind, ImageErrorKind::TooLarge);
        assert!(decode_thumbnail_rgb8(b"not an image", 64, 100).is_err());
    }
}
