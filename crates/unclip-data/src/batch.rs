//! A collated batch: per-sample keys, captions and stream positions plus the examples' named
//! f32 fields stacked along a leading batch dimension.

use crate::error::DataError;
use crate::transform::Example;

/// A collated batch: per-sample metadata plus stacked f32 fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    pub keys: Vec<String>,
    pub captions: Vec<Option<String>>,
    /// Global sample index (position in the epoch's all-rank stream) of each row.
    pub indices: Vec<u64>,
    pub fields: Vec<BatchField>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchField {
    pub name: String,
    /// Including the leading batch dimension.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// A batch of the given rows of this one, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Batch {
        Batch {
            epoch: self.epoch,
            keys: rows.iter().map(|&r| self.keys[r].clone()).collect(),
            captions: rows.iter().map(|&r| self.captions[r].clone()).collect(),
            indices: rows.iter().map(|&r| self.indices[r]).collect(),
            fields: self
                .fields
                .iter()
                .map(|f| {
                    let per: usize = f.shape[1..].iter().product();
                    let mut shape = f.shape.clone();
                    shape[0] = rows.len();
                    BatchField {
                        name: f.name.clone(),
                        shape,
                        data: rows
                            .iter()
                            .flat_map(|&r| f.data[r * per..(r + 1) * per].iter().copied())
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    pub fn field(&self, name: &str) -> Option<&BatchField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A field as a burn tensor on `device`.
    pub fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<burn::tensor::Tensor<B, D>, DataError> {
        let f = self.field(name).ok_or_else(|| DataError::Field {
            name: name.into(),
            what: "not in the batch".into(),
        })?;
        if f.shape.len() != D {
            return Err(DataError::Field {
                name: name.into(),
                what: format!("has {} dimensions, {D} requested", f.shape.len()),
            });
        }
        let data = burn::tensor::TensorData::new(f.data.clone(), f.shape.clone());
        Ok(burn::tensor::Tensor::from_data(data, device))
    }

    pub(crate) fn collate(epoch: u64, examples: Vec<Example>) -> Result<Batch, DataError> {
        let n = examples.len();
        let mut fields: Vec<BatchField> = examples[0]
            .fields
            .iter()
            .map(|f| BatchField {
                name: f.name.clone(),
                shape: std::iter::once(n).chain(f.shape.iter().copied()).collect(),
                data: Vec::with_capacity(n * f.data.len()),
            })
            .collect();
        let mut batch = Batch {
            epoch,
            keys: Vec::with_capacity(n),
            captions: Vec::with_capacity(n),
            indices: Vec::with_capacity(n),
            fields: Vec::new(),
        };
        for ex in examples {
            if ex.fields.len() != fields.len() {
                return Err(DataError::Field {
                    name: ex.key,
                    what: "examples of one batch have different field sets".into(),
                });
            }
            for (dst, src) in fields.iter_mut().zip(ex.fields) {
                if dst.name != src.name || dst.shape[1..] != src.shape[..] {
                    return Err(DataError::Field {
                        name: src.name,
                        what: format!(
                            "shape {:?} of sample `{}` differs from {:?}",
                            src.shape,
                            ex.key,
                            &dst.shape[1..]
                        ),
                    });
                }
                dst.data.extend_from_slice(&src.data);
            }
            batch.keys.push(ex.key);
            batch.captions.push(ex.caption);
            batch.indices.push(ex.index);
        }
        batch.fields = fields;
        Ok(batch)
    }
}
