//! Palisade node agent.
