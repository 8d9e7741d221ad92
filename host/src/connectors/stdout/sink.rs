//! Standard output, one record per line; at least once.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::event::Event;
use crate::sink::{Refused, Sink, SinkError, SinkProgress, SinkWriter, WriterScope};

/// Prints records to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    /// A stdout sink named `name`.
    pub fn new(name: &str) -> Self {
        StdoutSink {
            name: name.to_owned(),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        "standard output".to_owned()
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        _progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        Ok(Box::new(StdoutWriter {
            sink: self.name.clone(),
            scope: scope.clone(),
        }))
    }
}

struct StdoutWriter {
    sink: String,
    scope: WriterScope,
}

#[async_trait]
impl SinkWriter for StdoutWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        let mut text = Vec::with_capacity(records.iter().map(|r| r.body.len() + 1).sum());
        for record in &records {
            text.extend(
                record
                    .body
                    .iter()
                    .map(|b| if *b == b'\n' { b' ' } else { *b }),
            );
            text.push(b'\n');
        }
        // One write per batch, so that lines of concurrent partitions do not interleave.
        tokio::io::stdout()
            .write_all(&text)
            .await
            .map_err(|e| self.scope.error(&self.sink, format!("write failed: {e}")))?;
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        tokio::io::stdout()
            .flush()
            .await
            .map_err(|e| self.scope.error(&self.sink, format!("flush failed: {e}")))?;
        Ok(SinkProgress::Null)
    }
}
