//! Moving an application to another network.

use pn_common::ids::{AppId, NetworkId};

use super::Agent;
use crate::{error::Error, proto::AppInfo};

impl Agent {
    pub async fn move_app(&self, _id: &AppId, _network: &NetworkId) -> Result<AppInfo, Error> {
        Err(Error::internal("not yet"))
    }
}
