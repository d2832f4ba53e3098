//! The kubelet device plugin API (`v1beta1`), generated from
//! proto/deviceplugin.proto: messages, our `DevicePlugin` server, and the
//! `Registration` client (the server halves and clients are all generated,
//! so a test can play the kubelet with the same definitions).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("v1beta1");
