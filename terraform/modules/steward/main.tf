# One control-plane VM and N agent VMs on AWS, in a VPC of their own.
#
# Reachability (security groups, default deny):
#   agents  -> control plane: the gRPC port only (mTLS)
#   admins  -> control plane: the REST port (HTTPS) and SSH, from admin_cidrs
#   admins  -> agents:        SSH, from admin_cidrs
#   every VM -> anywhere:     outbound (package downloads; agents' tcp/http/tls checks)

locals {
  tags = merge({ "steward:deployment" = var.name_prefix }, var.tags)

  # A fixed address, so agents know the gRPC URL before the VM exists and the
  # server certificate can name it.
  controlplane_private_ip = cidrhost(var.subnet_cidr, 10)
  grpc_url                = "https://${local.controlplane_private_ip}:${var.grpc_port}"
  ami_id                  = coalesce(var.ami_id, data.aws_ami.debian.id)
}

# Official Debian 12 images, published by Debian's AWS account.
data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

data "aws_availability_zones" "available" {
  state = "available"
}

# ------------------------------------------------------------------ network

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "${var.name_prefix}-vpc" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name_prefix}-igw" })
}

resource "aws_subnet" "this" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.subnet_cidr
  availability_zone       = coalesce(var.availability_zone, data.aws_availability_zones.available.names[0])
  map_public_ip_on_launch = true
  tags                    = merge(local.tags, { Name = "${var.name_prefix}-subnet" })
}

resource "aws_route_table" "this" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = merge(local.tags, { Name = "${var.name_prefix}-routes" })
}

resource "aws_route_table_association" "this" {
  subnet_id      = aws_subnet.this.id
  route_table_id = aws_route_table.this.id
}

# ------------------------------------------------------------------ firewall

resource "aws_security_group" "controlplane" {
  name        = "${var.name_prefix}-controlplane"
  description = "Steward control plane: gRPC from agents, REST and SSH from admins"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${var.name_prefix}-controlplane" })
}

resource "aws_security_group" "agent" {
  name        = "${var.name_prefix}-agent"
  description = "Steward agents: SSH from admins only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${var.name_prefix}-agent" })
}

# Agents reach the gateway, and nothing else of the control plane.
resource "aws_vpc_security_group_ingress_rule" "grpc_from_agents" {
  security_group_id            = aws_security_group.controlplane.id
  description                  = "mTLS gRPC from Steward agents"
  referenced_security_group_id = aws_security_group.agent.id
  ip_protocol                  = "tcp"
  from_port                    = var.grpc_port
  to_port                      = var.grpc_port
}

resource "aws_vpc_security_group_ingress_rule" "rest_from_admins" {
  for_each = toset(var.admin_cidrs)

  security_group_id = aws_security_group.controlplane.id
  description       = "Steward REST API (HTTPS) from administrators"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.rest_port
  to_port           = var.rest_port
}

resource "aws_vpc_security_group_ingress_rule" "ssh_to_controlplane" {
  for_each = toset(var.admin_cidrs)

  security_group_id = aws_security_group.controlplane.id
  description       = "SSH from administrators"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_vpc_security_group_ingress_rule" "ssh_to_agents" {
  for_each = toset(var.admin_cidrs)

  security_group_id = aws_security_group.agent.id
  description       = "SSH from administrators"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_vpc_security_group_egress_rule" "controlplane_out" {
  security_group_id = aws_security_group.controlplane.id
  description       = "Outbound: package downloads, PostgreSQL if configured"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_vpc_security_group_egress_rule" "agent_out" {
  security_group_id = aws_security_group.agent.id
  description       = "Outbound: the gateway, package downloads, the agents' tcp/http/tls checks"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# ------------------------------------------------------------------ VMs

# Allocated before the VM, so the REST certificate can name the address.
resource "aws_eip" "controlplane" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${var.name_prefix}-controlplane" })
}

resource "aws_instance" "controlplane" {
  ami                         = local.ami_id
  instance_type               = var.controlplane_instance_type
  subnet_id                   = aws_subnet.this.id
  private_ip                  = local.controlplane_private_ip
  vpc_security_group_ids      = [aws_security_group.controlplane.id]
  key_name                    = var.ssh_key_name
  user_data_replace_on_change = true

  user_data = templatefile("${path.module}/templates/controlplane.yaml.tftpl", {
    deb_url    = var.controlplane_deb_url
    deb_sha256 = var.controlplane_deb_sha256
    grpc_port  = var.grpc_port
    rest_port  = var.rest_port
    private_ip = local.controlplane_private_ip
    public_ip  = aws_eip.controlplane.public_ip
  })

  # IMDSv2 only, not reachable from containers on the VM.
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_size = 20
  }

  tags = merge(local.tags, { Name = "${var.name_prefix}-controlplane", "steward:role" = "controlplane" })

  depends_on = [aws_route_table_association.this]
}

resource "aws_eip_association" "controlplane" {
  instance_id   = aws_instance.controlplane.id
  allocation_id = aws_eip.controlplane.id
}

resource "aws_instance" "agent" {
  count = var.agent_count

  ami                         = local.ami_id
  instance_type               = var.agent_instance_type
  subnet_id                   = aws_subnet.this.id
  vpc_security_group_ids      = [aws_security_group.agent.id]
  key_name                    = var.ssh_key_name
  user_data_replace_on_change = true

  # The token is in the instance's user data: one-time tokens with a short
  # TTL and a use count (stewardctl enroll-tokens create --ttl --uses) keep
  # what a reader of the user data could do small.
  user_data = templatefile("${path.module}/templates/agent.yaml.tftpl", {
    deb_url          = var.agent_deb_url
    deb_sha256       = var.agent_deb_sha256
    grpc_url         = local.grpc_url
    host_id          = "${var.name_prefix}-agent-${count.index + 1}"
    enrollment_token = var.enrollment_token
    extra_config     = var.agent_extra_config
  })

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted = true
  }

  tags = merge(local.tags, { Name = "${var.name_prefix}-agent-${count.index + 1}", "steward:role" = "agent" })

  lifecycle {
    precondition {
      condition     = can(regex("^stwe_[A-Za-z0-9_]+$", var.enrollment_token))
      error_message = "Agent VMs need enrollment_token: create one with `stewardctl enroll-tokens create --uses N` once the control plane runs."
    }
  }

  depends_on = [aws_eip_association.controlplane, aws_route_table_association.this]
}
