//! The two Parquet datasets (`Results` and `Results_PCA`): one schema definition, writer
//! and reader. Vectors are non-null `list<float32>` with the standard `element` item name, so
//! Spark, pyarrow and DuckDB read the folders as one dataset.

use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Float32Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};

/// Which dataset: the vector column's name differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// `Results`: `path`, `label`, `features`.
    Features,
    /// `Results_PCA`: `path`, `label`, `pca_features`.
    Pca,
}

impl Dataset {
    /// The vector column's name.
    pub fn vector_column(self) -> &'static str {
        match self {
            Dataset::Features => "features",
            Dataset::Pca => "pca_features",
        }
    }

    /// The Arrow schema of the dataset.
    pub fn schema(self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new(self.vector_column(), DataType::List(item_field()), false),
        ]))
    }
}

fn item_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Float32, false))
}

/// One row of either dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRow {
    /// Image path relative to the input root.
    pub path: String,
    /// Label (parent folder name).
    pub label: String,
    /// Features or projections.
    pub values: Vec<f32>,
}

/// Encodes rows as one Parquet file (snappy), closing the writer.
pub fn write_rows(dataset: Dataset, rows: &[VectorRow]) -> Result<Bytes> {
    let schema = dataset.schema();
    let mut paths = StringBuilder::new();
    let mut labels = StringBuilder::new();
    let mut vectors = ListBuilder::new(Float32Builder::new()).with_field(item_field());
    for row in rows {
        paths.append_value(&row.path);
        labels.append_value(&row.label);
        vectors.values().append_slice(&row.values);
        vectors.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(paths.finish()),
        Arc::new(labels.finish()),
        Arc::new(vectors.finish()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    // No dictionary for the vector column: its values are nearly all distinct, so the
    // writer would build a dictionary only to drop it for plain pages (twice the time, and a
    // larger file). The path and label columns keep theirs.
    let vector_values = ColumnPath::from(vec![
        dataset.vector_column().to_string(),
        "list".to_string(),
        item_field().name().clone(),
    ]);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(vector_values, false)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// Decodes a Parquet file of either dataset.
pub fn read_rows(dataset: Dataset, bytes: Bytes) -> Result<Vec<VectorRow>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        let paths = column_as::<StringArray>(&batch, "path")?;
        let labels = column_as::<StringArray>(&batch, "label")?;
        let name = dataset.vector_column();
        let vectors = column_as::<ListArray>(&batch, name)?;
        for i in 0..batch.num_rows() {
            let list = vectors.value(i);
            let values = list
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| wrong_type(name))?;
            rows.push(VectorRow {
                path: paths.value(i).to_string(),
                label: labels.value(i).to_string(),
                values: values.values().to_vec(),
            });
        }
    }
    Ok(rows)
}

/// The `path` column of a Parquet file of either dataset, in row order, without decoding
/// the vectors (the reducer's checks need only the paths).
pub fn read_paths(bytes: Bytes) -> Result<Vec<String>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["path"]);
    let mut paths = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let column = column_as::<StringArray>(&batch, "path")?;
        paths.extend((0..column.len()).map(|i| column.value(i).to_string()));
    }
    Ok(paths)
}

/// Column `name` of `batch` as the Arrow array type `T`.
fn column_as<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .ok_or_else(|| {
            Error::Arrow(arrow_schema::ArrowError::SchemaError(format!(
                "no column {name:?}"
            )))
        })?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| wrong_type(name))
}

fn wrong_type(name: &str) -> Error {
    Error::Arrow(arrow_schema::ArrowError::SchemaError(format!(
        "column {name:?} has the wrong type"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_rows_and_schema() {
        let rows = vec![
            VectorRow {
                path: "a/1.jpg".into(),
                label: "a".into(),
                values: vec![1.0, -2.5, 3.25],
            },
            VectorRow {
                path: "b/é 2.png".into(),
                label: "b".into(),
                values: vec![0.0, 0.5, 1e-8],
            },
        ];
        let bytes = write_rows(Dataset::Pca, &rows).unwrap();
        assert_eq!(read_rows(Dataset::Pca, bytes.clone()).unwrap(), rows);
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(builder.schema().as_ref(), Dataset::Pca.schema().as_ref());
        assert!(read_rows(Dataset::Features, write_rows(Dataset::Pca, &rows).unwrap()).is_err());
        assert!(read_rows(
            Dataset::Features,
            write_rows(Dataset::Features, &[]).unwrap()
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn vectors_are_plain_encoded_and_labels_use_a_dictionary() {
        use parquet::basic::Encoding;
        for dataset in [Dataset::Features, Dataset::Pca] {
            let rows: Vec<VectorRow> = (0..200)
                .map(|i| VectorRow {
                    path: format!("l{}/{i}.jpg", i % 3),
                    label: format!("l{}", i % 3),
                    values: (0..16).map(|j| (i * 16 + j) as f32 * 0.37).collect(),
                })
                .collect();
            let bytes = write_rows(dataset, &rows).unwrap();
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap();
            let group = builder.metadata().row_group(0);
            let encodings = |name: &str| -> Vec<Encoding> {
                let column = group
                    .columns()
                    .iter()
                    .find(|c| c.column_path().string().starts_with(name))
                    .unwrap_or_else(|| panic!("no column {name}"));
                column.encodings().collect()
            };
            let dictionary = |e: &[Encoding]| {
                e.contains(&Encoding::RLE_DICTIONARY) || e.contains(&Encoding::PLAIN_DICTIONARY)
            };
            let vectors = encodings(dataset.vector_column());
            assert!(!dictionary(&vectors), "{dataset:?}: {vectors:?}");
            assert!(
                vectors.contains(&Encoding::PLAIN),
                "{dataset:?}: {vectors:?}"
            );
            let labels = encodings("label");
            assert!(dictionary(&labels), "{dataset:?}: {labels:?}");
            let paths: Vec<String> = rows.iter().map(|r| r.path.clone()).collect();
            assert_eq!(read_paths(bytes.clone()).unwrap(), paths, "{dataset:?}");
            assert_eq!(read_rows(dataset, bytes).unwrap(), rows);
        }
    }
}
