"""Export of the student to TF.js: conversion, parity and latency checks, and the Node/web assets."""
