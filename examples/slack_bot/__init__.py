"""A Slack-style bot backend on Moorage, built only on the official ``anthropic`` client
(``client.beta.*``): one chat thread is one Moorage session; attachments go in as session
resources; a signed webhook, not an open stream, tells the bot a turn ended; the agent's words and
the files it wrote go back to the thread. See README.md beside this file."""
