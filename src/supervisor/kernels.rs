//! A message's interpreter outside a run, for clients that manage kernels themselves (the
//! Jupyter kernels API): binding a message ahead of its first run, interrupting the cell in
//! progress, and asking for a fresh interpreter.

use super::*;

impl Supervisor {
    /// Binds `message_id` to (`owner`, `chat_id`) as a run would, before any run: a notebook
    /// client opens a kernel, then executes. A new message takes a warm sandbox, so that its
    /// first cell is fast. A message bound to someone else is not found.
    pub async fn open_message(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        message_id: &MessageId,
    ) -> Result<MessageRecord> {
        let message = self.claim(owner, chat_id, message_id).await?;
        self.hold(&message).await?;
        Ok(message)
    }

    /// Interrupts the cell running in `owner`'s message `message_id`, if one is: it gets
    /// KeyboardInterrupt, and its interpreter is kept.
    pub async fn interrupt(&self, owner: &Owner, message_id: &MessageId) -> Result<()> {
        let message = self.message(owner, message_id).await?;
        self.runtime
            .interrupt(message.workspace_id.as_str())
            .await?;
        Ok(())
    }
}
