-- The VICIdial tables rpo_guard reads and writes, with the columns, types and indexes
-- VICIdial's own schema gives them (bin/MySQL_AST_CREATE_tables.sql of the VICIdial
-- source); vicidial_list, vicidial_hopper and vicidial_campaigns reduced to the columns
-- the tests use.
CREATE TABLE vicidial_dnc (
phone_number VARCHAR(18) PRIMARY KEY NOT NULL
);

CREATE TABLE vicidial_campaign_dnc (
phone_number VARCHAR(18) NOT NULL,
campaign_id VARCHAR(8) NOT NULL,
index (phone_number),
unique index phonecamp (phone_number, campaign_id)
);

CREATE TABLE vicidial_list (
lead_id INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
status VARCHAR(6),
list_id BIGINT(14) UNSIGNED NOT NULL DEFAULT '0',
called_since_last_reset ENUM('Y','N','Y1','Y2','Y3','Y4','Y5','Y6','Y7','Y8','Y9','Y10') default 'N',
phone_code VARCHAR(10),
phone_number VARCHAR(18) NOT NULL,
index (phone_number),
index (list_id),
index (status)
);

CREATE TABLE vicidial_hopper (
hopper_id INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
lead_id INT(9) UNSIGNED NOT NULL,
campaign_id VARCHAR(8),
status ENUM('READY','QUEUE','INCALL','DONE','HOLD','DNC') default 'READY',
user VARCHAR(20),
list_id BIGINT(14) UNSIGNED NOT NULL,
gmt_offset_now DECIMAL(4,2) DEFAULT '0.00',
state VARCHAR(2) default '',
alt_dial VARCHAR(6) default 'NONE',
priority TINYINT(2) default '0',
source VARCHAR(1) default '',
index (lead_id)
);

CREATE TABLE vicidial_campaigns (
campaign_id VARCHAR(8) PRIMARY KEY NOT NULL,
campaign_name VARCHAR(40),
dial_prefix VARCHAR(20) default '9',
campaign_cid VARCHAR(20) default '0000000000',
use_internal_dnc ENUM('Y','N','AREACODE') default 'N',
use_campaign_dnc ENUM('Y','N','AREACODE') default 'N',
manual_dial_filter VARCHAR(50) default 'NONE'
);
