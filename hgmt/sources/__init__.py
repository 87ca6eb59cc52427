"""Where the data comes from: SURREAL's files (`surreal`) and demo clips written in their format
(`synthetic`)."""
