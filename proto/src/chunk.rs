//! Chunked transfer: a message larger than a chunk travels as consecutive [`v1::Chunk`]s whose
//! data, concatenated, is the message's protobuf encoding (see `Chunk` in `federation.proto`).
//!
//! [`split_coordinator`] and [`split_client`] cut a message into chunk messages; the receiver
//! feeds them to an [`Assembler`] and decodes the whole message when the last one arrives.
//!
//! A model's tensors are not copied on the way out: a task's (or update's) parameters are
//! encoded around their tensors' shared bytes (the encoding is a list of buffers, the tensors'
//! own among them), so N clients' tasks that carry one global model slice the same buffer, and
//! only the chunks that straddle two buffers are copied (one chunk each). On the way in the
//! assembler writes into one buffer of the announced size, and decoding from it leaves the
//! tensors' bytes in place ([`Bytes`] slices).

use prost::bytes::{Buf, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::v1::{self, client_message, coordinator_message, ClientMessage, CoordinatorMessage};

/// The chunk size Shoal's peers send: Flower cuts arrays into 5 MB pieces for the same reason
/// (no huge gRPC buffers, heartbeats and other streams' messages are not held up for long).
/// 1 MiB rather than 4: each stream being sent to holds about one encoded chunk, so the
/// coordinator sending a 17 MB model to 10 clients peaked at 180 MB instead of 225 MB, rounds as
/// fast and `bench transfer` as fast (docs/guide/scale.md).
pub const CHUNK_BYTES: usize = 1 << 20;

/// What a chunk message adds around its data (tags, lengths, the two offsets), with room to spare.
pub const CHUNK_OVERHEAD: usize = 64;

/// The largest data per chunk for a peer that takes messages of up to `limit` bytes: `preferred`
/// ([`CHUNK_BYTES`] unless a test says otherwise), or less when the limit is smaller.
pub fn chunk_size(preferred: usize, limit: u64) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    preferred.min(limit.saturating_sub(CHUNK_OVERHEAD)).max(1)
}

/// `msg` as the messages that carry it: itself when its encoding fits in `size` bytes, else
/// chunks of at most `size` bytes of data each.
pub fn split_coordinator(msg: CoordinatorMessage, size: usize) -> Vec<CoordinatorMessage> {
    if msg.encoded_len() <= size {
        return vec![msg];
    }
    let mut rope = Rope::default();
    match msg.msg {
        Some(coordinator_message::Msg::Task(task)) => put_task(&mut rope, 3, task),
        other => rope.put_encoded(&CoordinatorMessage { msg: other }),
    }
    cut(rope, size)
        .into_iter()
        .map(|c| CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Chunk(c)),
        })
        .collect()
}

/// [`split_coordinator`] for the other direction.
pub fn split_client(msg: ClientMessage, size: usize) -> Vec<ClientMessage> {
    if msg.encoded_len() <= size {
        return vec![msg];
    }
    let mut rope = Rope::default();
    match msg.msg {
        Some(client_message::Msg::Result(result)) => put_result(&mut rope, 2, result),
        other => rope.put_encoded(&ClientMessage { msg: other }),
    }
    cut(rope, size)
        .into_iter()
        .map(|c| ClientMessage {
            msg: Some(client_message::Msg::Chunk(c)),
        })
        .collect()
}

/// A chunked transfer that cannot be taken in; the stream that sent it ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("a chunked message of {total} bytes is over the limit of {limit} bytes ({why})")]
    TooLarge {
        total: u64,
        limit: u64,
        why: &'static str,
    },
    #[error("a chunk starts at byte {got} of its message where byte {want} was due (chunks must come in order, nothing between them)")]
    OutOfOrder { got: u64, want: u64 },
    #[error(
        "a chunk says its message has {got} bytes where the message's first chunk said {want}"
    )]
    TotalChanged { got: u64, want: u64 },
    #[error("a chunk of {len} bytes at byte {offset} runs past its message's {total} bytes")]
    Overrun { len: u64, offset: u64, total: u64 },
    #[error("an empty chunk")]
    Empty,
    #[error("a chunked message does not decode: {0}")]
    Decode(String),
    #[error("a chunk inside a chunked message")]
    Nested,
    #[error("a message between the chunks of another")]
    Interleaved,
}

/// Decodes a message reassembled by an [`Assembler`].
pub fn decode_coordinator(whole: Bytes) -> Result<CoordinatorMessage, ChunkError> {
    match CoordinatorMessage::decode(whole) {
        Ok(CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Chunk(_)),
        }) => Err(ChunkError::Nested),
        Ok(m) => Ok(m),
        Err(e) => Err(ChunkError::Decode(e.to_string())),
    }
}

/// Decodes a message reassembled by an [`Assembler`].
pub fn decode_client(whole: Bytes) -> Result<ClientMessage, ChunkError> {
    match ClientMessage::decode(whole) {
        Ok(ClientMessage {
            msg: Some(client_message::Msg::Chunk(_)),
        }) => Err(ChunkError::Nested),
        Ok(m) => Ok(m),
        Err(e) => Err(ChunkError::Decode(e.to_string())),
    }
}

/// Takes in one stream's chunks, one message at a time.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<(u64, BytesMut)>,
}

impl Assembler {
    /// Adds `chunk`; returns the whole encoded message when it is complete. `limit` bounds the
    /// message's size (checked at its first chunk, before anything is allocated) and `why` says
    /// where the limit comes from, for the error.
    pub fn push(
        &mut self,
        chunk: v1::Chunk,
        limit: u64,
        why: &'static str,
    ) -> Result<Option<Bytes>, ChunkError> {
        let v1::Chunk {
            total_bytes: total,
            offset,
            data,
        } = chunk;
        if data.is_empty() {
            self.open = None;
            return Err(ChunkError::Empty);
        }
        let (want_total, buf) = match &mut self.open {
            Some((t, buf)) => (*t, buf),
            None => {
                if total > limit {
                    return Err(ChunkError::TooLarge { total, limit, why });
                }
                let cap = usize::try_from(total).map_err(|_| ChunkError::TooLarge {
                    total,
                    limit,
                    why,
                })?;
                let (_, buf) = self.open.insert((total, BytesMut::with_capacity(cap)));
                (total, buf)
            }
        };
        let at = buf.len() as u64;
        let fail = |e| Err(e);
        let outcome = if total != want_total {
            fail(ChunkError::TotalChanged {
                got: total,
                want: want_total,
            })
        } else if offset != at {
            fail(ChunkError::OutOfOrder {
                got: offset,
                want: at,
            })
        } else if at + data.len() as u64 > total {
            fail(ChunkError::Overrun {
                len: data.len() as u64,
                offset,
                total,
            })
        } else {
            buf.extend_from_slice(&data);
            Ok(buf.len() as u64 == total)
        };
        match outcome {
            Ok(false) => Ok(None),
            Ok(true) => Ok(self.open.take().map(|(_, b)| b.freeze())),
            Err(e) => {
                self.open = None;
                Err(e)
            }
        }
    }

    /// Whether a message is part way in.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// An encoding as a list of buffers: what is written here, and tensors' bytes shared with the
/// message they came from.
#[derive(Default)]
struct Rope {
    parts: Vec<Bytes>,
    scratch: Vec<u8>,
}

impl Rope {
    fn flush(&mut self) {
        if !self.scratch.is_empty() {
            self.parts
                .push(Bytes::from(std::mem::take(&mut self.scratch)));
        }
    }

    fn put_shared(&mut self, b: Bytes) {
        self.flush();
        if !b.is_empty() {
            self.parts.push(b);
        }
    }

    fn put_encoded(&mut self, m: &impl Message) {
        m.encode_raw(&mut self.scratch);
    }

    fn put_len_field(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, &mut self.scratch);
        encode_varint(len as u64, &mut self.scratch);
    }

    fn finish(mut self) -> (Vec<Bytes>, usize) {
        self.flush();
        let total = self.parts.iter().map(Bytes::len).sum();
        (self.parts, total)
    }
}

/// The size of a length-delimited field `tag` whose body is `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A tensor without its data, and the size of the whole tensor's encoding.
fn tensor_head(t: &v1::Tensor) -> (v1::Tensor, usize) {
    let head = v1::Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape: t.shape.clone(),
        data: Bytes::new(),
    };
    // Empty data is left out, as prost leaves it out: the same size either way.
    let data = if t.data.is_empty() {
        0
    } else {
        field_len(4, t.data.len())
    };
    let len = head.encoded_len() + data;
    (head, len)
}

/// The body size of a `Parameters` as [`put_parameters`] writes it.
fn parameters_len(p: &v1::Parameters) -> usize {
    p.tensors
        .iter()
        .map(|t| field_len(1, tensor_head(t).1))
        .sum()
}

/// `p` as field `tag`: each tensor's name, type and shape written, its data shared.
fn put_parameters(rope: &mut Rope, tag: u32, p: &v1::Parameters) {
    rope.put_len_field(tag, parameters_len(p));
    for t in &p.tensors {
        let (head, len) = tensor_head(t);
        rope.put_len_field(1, len);
        rope.put_encoded(&head);
        if !t.data.is_empty() {
            rope.put_len_field(4, t.data.len());
            rope.put_shared(t.data.clone());
        }
    }
}

/// A task as field `tag` of its envelope: everything but its parameters (and SCAFFOLD's control)
/// encoded as usual, then those as shared tensors. The control goes in a second `fit` field,
/// which a decoder merges into the first (protobuf merges repeated embedded messages).
fn put_task(rope: &mut Rope, tag: u32, mut task: v1::Task) {
    let params = task.parameters.take();
    let control = match &mut task.kind {
        Some(v1::task::Kind::Fit(f)) => f.control.take(),
        _ => None,
    };
    let fit_len = control.as_ref().map(|c| field_len(2, parameters_len(c)));
    let len = task.encoded_len()
        + params
            .as_ref()
            .map_or(0, |p| field_len(7, parameters_len(p)))
        + fit_len.map_or(0, |f| field_len(10, f));
    rope.put_len_field(tag, len);
    rope.put_encoded(&task);
    if let Some(p) = &params {
        put_parameters(rope, 7, p);
    }
    if let (Some(c), Some(f)) = (&control, fit_len) {
        rope.put_len_field(10, f);
        put_parameters(rope, 2, c);
    }
}

/// A result as field `tag` of its envelope; a fit result's parameters and control delta as
/// shared tensors, in a second `fit` field that a decoder merges into the first.
fn put_result(rope: &mut Rope, tag: u32, mut result: v1::TaskResult) {
    let (params, delta) = match &mut result.outcome {
        Some(v1::task_result::Outcome::Fit(f)) => (f.parameters.take(), f.control_delta.take()),
        _ => (None, None),
    };
    let fit_len = (params.is_some() || delta.is_some()).then(|| {
        params
            .as_ref()
            .map_or(0, |p| field_len(1, parameters_len(p)))
            + delta
                .as_ref()
                .map_or(0, |d| field_len(4, parameters_len(d)))
    });
    let len = result.encoded_len() + fit_len.map_or(0, |f| field_len(4, f));
    rope.put_len_field(tag, len);
    rope.put_encoded(&result);
    if let Some(f) = fit_len {
        rope.put_len_field(4, f);
        if let Some(p) = &params {
            put_parameters(rope, 1, p);
        }
        if let Some(d) = &delta {
            put_parameters(rope, 4, d);
        }
    }
}

/// The rope's bytes as chunks of at most `size` bytes: slices of the shared buffers where a
/// chunk lies within one, a copy only where it straddles two.
fn cut(rope: Rope, size: usize) -> Vec<v1::Chunk> {
    let (parts, total) = rope.finish();
    let size = size.max(1);
    let mut out = Vec::with_capacity(total / size + parts.len() + 1);
    let mut cur = BytesMut::new();
    let mut offset = 0u64;
    let mut push = |data: Bytes, out: &mut Vec<v1::Chunk>| {
        let len = data.len() as u64;
        out.push(v1::Chunk {
            total_bytes: total as u64,
            offset,
            data,
        });
        offset += len;
    };
    for mut p in parts {
        while !p.is_empty() {
            if cur.is_empty() && p.len() >= size {
                let piece = p.split_to(size);
                push(piece, &mut out);
                continue;
            }
            let take = (size - cur.len()).min(p.len());
            cur.extend_from_slice(&p[..take]);
            p.advance(take);
            if cur.len() == size {
                push(cur.split().freeze(), &mut out);
            }
        }
    }
    if !cur.is_empty() {
        push(cur.freeze(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, n: usize, fill: u8) -> v1::Tensor {
        v1::Tensor {
            name: name.into(),
            dtype: v1::Dtype::F32 as i32,
            shape: vec![n as u64],
            data: Bytes::from((0..4 * n).map(|i| fill ^ (i as u8)).collect::<Vec<u8>>()),
        }
    }

    fn params(fill: u8) -> v1::Parameters {
        v1::Parameters {
            tensors: vec![
                tensor("w", 5000, fill),
                tensor("b", 3, fill + 1),
                tensor("empty", 0, 0),
            ],
        }
    }

    fn task(control: bool) -> CoordinatorMessage {
        CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Task(v1::Task {
                task_id: "t-1".into(),
                job_id: "job".into(),
                round: 3,
                dataset: "digits".into(),
                class_names: vec!["a".into(), "b".into()],
                parameters: Some(params(7)),
                seed: 42,
                kind: Some(v1::task::Kind::Fit(v1::FitTask {
                    local: Some(v1::LocalTraining {
                        epochs: 2,
                        lr: 0.1,
                        ..Default::default()
                    }),
                    control: control.then(|| params(9)),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }
    }

    fn result(delta: bool) -> ClientMessage {
        ClientMessage {
            msg: Some(client_message::Msg::Result(v1::TaskResult {
                task_id: "t-1".into(),
                job_id: "job".into(),
                round: 3,
                outcome: Some(v1::task_result::Outcome::Fit(v1::FitResult {
                    parameters: Some(params(3)),
                    num_examples: 100,
                    train_loss: 0.5,
                    control_delta: delta.then(|| params(5)),
                    trees: None,
                    delta: false,
                })),
            })),
        }
    }

    fn assemble(chunks: Vec<v1::Chunk>) -> Bytes {
        let mut a = Assembler::default();
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let out = a.push(c, u64::MAX, "test").unwrap();
            assert_eq!(out.is_some(), i + 1 == n, "complete only at the last chunk");
            if let Some(b) = out {
                return b;
            }
        }
        unreachable!("no chunks")
    }

    #[test]
    fn chunked_tasks_and_results_decode_to_the_same_message() {
        for size in [1, 7, 1000, 4096, 19_999, 20_000, 1 << 20] {
            for control in [false, true] {
                let msg = task(control);
                let pieces = split_coordinator(msg.clone(), size);
                if msg.encoded_len() <= size {
                    assert_eq!(pieces, vec![msg.clone()]);
                    continue;
                }
                let chunks: Vec<v1::Chunk> = pieces
                    .into_iter()
                    .map(|m| match m.msg {
                        Some(coordinator_message::Msg::Chunk(c)) => {
                            assert!(c.data.len() <= size);
                            c
                        }
                        other => panic!("not a chunk: {other:?}"),
                    })
                    .collect();
                let whole = assemble(chunks);
                // As many bytes as prost writes, but for a second `fit` field's key and length
                // when the control travels; equal once decoded.
                assert!(whole.len() - msg.encoded_len() <= 8, "size {size}");
                assert_eq!(
                    CoordinatorMessage::decode(whole).unwrap(),
                    msg,
                    "size {size}"
                );
            }
            for delta in [false, true] {
                let msg = result(delta);
                let pieces = split_client(msg.clone(), size);
                if msg.encoded_len() <= size {
                    continue;
                }
                let chunks = pieces
                    .into_iter()
                    .map(|m| match m.msg {
                        Some(client_message::Msg::Chunk(c)) => c,
                        other => panic!("not a chunk: {other:?}"),
                    })
                    .collect();
                let whole = assemble(chunks);
                assert!(whole.len() - msg.encoded_len() <= 8, "size {size}");
                assert_eq!(ClientMessage::decode(whole).unwrap(), msg, "size {size}");
            }
        }
    }

    #[test]
    fn other_messages_are_chunked_whole() {
        let notice = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Notice(v1::Notice {
                job_id: "j".into(),
                message: "x".repeat(10_000),
            })),
        };
        let chunks: Vec<v1::Chunk> = split_coordinator(notice.clone(), 999)
            .into_iter()
            .map(|m| match m.msg {
                Some(coordinator_message::Msg::Chunk(c)) => c,
                _ => panic!("not a chunk"),
            })
            .collect();
        assert_eq!(chunks.len(), 11);
        assert_eq!(
            CoordinatorMessage::decode(assemble(chunks)).unwrap(),
            notice
        );
    }

    #[test]
    fn tensors_travel_as_slices_of_their_own_buffer() {
        let msg = task(false);
        let Some(coordinator_message::Msg::Task(t)) = &msg.msg else {
            unreachable!()
        };
        let data = t.parameters.as_ref().unwrap().tensors[0].data.clone();
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        let shared = split_coordinator(msg, 4096)
            .into_iter()
            .filter_map(|m| match m.msg {
                Some(coordinator_message::Msg::Chunk(c)) => Some(c.data),
                _ => None,
            })
            .filter(|d| range.contains(&(d.as_ptr() as usize)))
            .map(|d| d.len())
            .sum::<usize>();
        // 20,000 bytes of tensor: all but the straddling ends are zero-copy slices.
        assert!(shared >= 20_000 - 2 * 4096, "only {shared} bytes shared");
    }

    #[test]
    fn bad_transfers_are_refused_before_allocation_and_in_order() {
        let chunk = |total, offset, len| v1::Chunk {
            total_bytes: total,
            offset,
            data: Bytes::from(vec![1u8; len]),
        };
        let mut a = Assembler::default();
        assert_eq!(
            a.push(chunk(u64::MAX, 0, 10), 1 << 30, "the flag"),
            Err(ChunkError::TooLarge {
                total: u64::MAX,
                limit: 1 << 30,
                why: "the flag"
            })
        );
        assert!(!a.is_open());
        assert_eq!(a.push(chunk(100, 0, 10), 1000, "x"), Ok(None));
        assert_eq!(
            a.push(chunk(100, 20, 10), 1000, "x"),
            Err(ChunkError::OutOfOrder { got: 20, want: 10 })
        );
        assert!(!a.is_open(), "a broken transfer is dropped");
        assert_eq!(a.push(chunk(100, 0, 60), 1000, "x"), Ok(None));
        assert_eq!(
            a.push(chunk(100, 60, 50), 1000, "x"),
            Err(ChunkError::Overrun {
                len: 50,
                offset: 60,
                total: 100
            })
        );
        assert_eq!(a.push(chunk(100, 0, 60), 1000, "x"), Ok(None));
        assert_eq!(
            a.push(chunk(200, 60, 40), 1000, "x"),
            Err(ChunkError::TotalChanged {
                got: 200,
                want: 100
            })
        );
        assert_eq!(a.push(chunk(100, 0, 0), 1000, "x"), Err(ChunkError::Empty));
        assert_eq!(a.push(chunk(100, 0, 60), 1000, "x"), Ok(None));
        assert_eq!(
            a.push(chunk(100, 60, 40), 1000, "x")
                .unwrap()
                .unwrap()
                .len(),
            100
        );
        assert!(!a.is_open());
    }

    #[test]
    fn chunk_size_leaves_room_for_the_envelope() {
        assert_eq!(chunk_size(CHUNK_BYTES, 64 << 20), CHUNK_BYTES);
        assert_eq!(chunk_size(CHUNK_BYTES, 1 << 20), (1 << 20) - CHUNK_OVERHEAD);
        assert_eq!(chunk_size(CHUNK_BYTES, 0), 1);
    }
}
