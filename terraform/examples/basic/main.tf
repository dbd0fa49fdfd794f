# A Steward fleet on AWS: one control plane and var.agent_count agents,
# using the module in ../../modules/steward. See terraform/README.md.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "steward" {
  source = "../../modules/steward"

  name_prefix  = var.name_prefix
  admin_cidrs  = var.admin_cidrs
  ssh_key_name = var.ssh_key_name
  agent_count  = var.agent_count

  controlplane_deb_url    = var.controlplane_deb_url
  controlplane_deb_sha256 = var.controlplane_deb_sha256
  agent_deb_url           = var.agent_deb_url
  agent_deb_sha256        = var.agent_deb_sha256
  enrollment_token        = var.enrollment_token

  agent_extra_config = <<-EOT
    [[checks]]
    name = "ssh"
    kind = "systemd"
    unit = "ssh.service"
  EOT

  tags = {
    project = "steward-example"
  }
}
