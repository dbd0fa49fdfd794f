//! The gRPC codec of the agent stream: prost encoding, as `tonic-prost`'s
//! codec, with 1 KiB initial buffers instead of 8 KiB. Each open stream
//! keeps one encode and one decode buffer for its whole life (days, for an
//! agent's session), so with 10,000 agents connected the default buffers
//! alone cost 160 MiB of control-plane memory. A buffer still grows to the
//! largest message it carried (a batch of results, a job's output chunk).
use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;
/// Encoded bytes after which a response stream yields to the transport
/// (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost messages with small initial buffers (used by the generated client
/// and server: `codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct StewardCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StewardCodec<T, U> {
    fn default() -> Self {
        StewardCodec(PhantomData)
    }
}

impl<T, U> Codec for StewardCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
